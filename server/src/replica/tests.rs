//! One test (or a few) per rule, named after the Kafka behaviour or KIP it checks.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use wharf_engine::epoch::LeaderEpochCache;
use wharf_protocol::batch::BatchBuilder;
use wharf_protocol::replication::{EpochEndOffset, FetchPartition, PartitionHeader};

use super::*;
use crate::metadata::{LeaderEpoch, NodeId};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);
const LAG_MS: i64 = 10_000;
const CHECKPOINT_MS: i64 = 5_000;
const TOPIC: u128 = 0x7070;

fn config(min_isr: usize) -> ReplicaConfig {
    ReplicaConfig {
        replica_lag_time_max_ms: LAG_MS,
        min_insync_replicas: min_isr,
        replica_fetch_backoff_ms: 100,
        alter_partition_retry_ms: 50,
        high_watermark_checkpoint_interval_ms: CHECKPOINT_MS,
    }
}

fn change(
    leader: Option<NodeId>,
    epoch: i32,
    partition_epoch: i32,
    isr: &[NodeId],
) -> LeaderAndIsr {
    LeaderAndIsr {
        replicas: vec![A, B, C],
        isr: isr.to_vec(),
        leader,
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch,
    }
}

fn epochs(entries: &[(i32, i64)]) -> LeaderEpochCache {
    let mut cache = LeaderEpochCache::default();
    for &(epoch, start) in entries {
        assert!(cache.assign(epoch, start));
    }
    cache
}

fn log(end: i64, entries: &[(i32, i64)]) -> LocalLog {
    LocalLog {
        log_start_offset: 0,
        log_end_offset: end,
        epochs: epochs(entries),
        high_watermark: 0,
    }
}

/// Node A leading epoch 1 of a partition on A, B, C (all in the ISR), its log holding
/// `end` offsets of epoch 0, all on disk.
fn leader(min_isr: usize, end: i64) -> ReplicaState {
    let entries: &[(i32, i64)] = if end > 0 { &[(0, 0)] } else { &[] };
    let mut r = ReplicaState::new(A, 100, config(min_isr), log(end, entries));
    let effects = r.apply_partition_change(&change(Some(A), 1, 1, &[A, B, C]), 0);
    assert_eq!(
        effects.log,
        vec![LogOp::AssignEpoch {
            epoch: 1,
            start_offset: end
        }]
    );
    r
}

fn fetch(replica: NodeId, fetch_offset: i64, last_fetched_epoch: i32) -> FollowerFetch {
    FollowerFetch {
        replica,
        broker_epoch: 10,
        current_leader_epoch: 1,
        fetch_offset,
        durable_offset: fetch_offset,
        last_fetched_epoch,
        log_start_offset: 0,
    }
}

fn waiter(token: u64) -> AckWaiter {
    AckWaiter {
        token: ProduceToken(token),
        deadline_ms: 30_000,
    }
}

fn acks(effects: &Effects) -> Vec<(u64, Result<(), ResponseError>)> {
    effects.acks.iter().map(|a| (a.token.0, a.result)).collect()
}

/// A record batch of `records` records at `base` in leader epoch `epoch`.
fn batch(base: i64, epoch: i32, records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new()
        .base_offset(base)
        .partition_leader_epoch(epoch);
    for i in 0..records {
        b.push(
            None,
            Some(format!("value-{base}-{i}").as_bytes()),
            &[],
            1_000,
        );
    }
    b.build()
}

fn batches(parts: &[(i64, i32, usize)]) -> Bytes {
    let mut out = Vec::new();
    for &(base, epoch, records) in parts {
        out.extend_from_slice(&batch(base, epoch, records));
    }
    Bytes::from(out)
}

/// Node B following A in epoch 1, its log given.
fn follower(local_log: LocalLog) -> ReplicaState {
    let mut r = ReplicaState::new(B, 10, config(1), local_log);
    r.apply_partition_change(&change(Some(A), 1, 1, &[A, B, C]), 0);
    r
}

fn asked(position: &FetchPosition) -> FetchPartition {
    position.to_wire(TOPIC, 0, 1 << 20)
}

fn ok_header(hw: i64, records: &Bytes) -> PartitionHeader {
    PartitionHeader {
        high_watermark: hw,
        last_stable_offset: hw,
        log_start_offset: 0,
        leader_epoch: 1,
        leader_id: A.0,
        records_bytes: records.len() as u32,
        ..PartitionHeader::error(TOPIC, 0, 0)
    }
}

// ---------------------------------------------------------------------------------------
// Produce and acks=all
// ---------------------------------------------------------------------------------------

#[test]
fn produce_goes_to_the_leader_only() {
    let f = follower(log(0, &[]));
    assert_eq!(
        f.check_produce(Acks::Leader),
        Err(ResponseError::NotLeaderOrFollower)
    );
    let fresh = ReplicaState::new(A, 1, config(1), LocalLog::default());
    assert_eq!(
        fresh.check_produce(Acks::All),
        Err(ResponseError::NotLeaderOrFollower)
    );
    assert_eq!(leader(1, 0).check_produce(Acks::All), Ok(()));
}

#[test]
fn acks_all_is_refused_before_the_append_when_the_isr_is_under_min_insync_replicas() {
    let mut r = leader(2, 0);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A]), 0);
    assert_eq!(
        r.check_produce(Acks::All),
        Err(ResponseError::NotEnoughReplicas)
    );
    // acks=1 keeps working on the leader.
    assert_eq!(r.check_produce(Acks::Leader), Ok(()));
}

#[test]
fn min_insync_replicas_is_capped_at_the_replica_count() {
    let r = leader(5, 0);
    assert_eq!(r.effective_min_isr(), 3);
    assert_eq!(r.check_produce(Acks::All), Ok(()));
}

#[test]
fn acks_all_completes_once_every_isr_member_has_the_batch_on_disk() {
    let mut r = leader(2, 0);
    let e = r.appended(5, Some(waiter(1)), 10);
    assert!(e.acks.is_empty());
    r.on_follower_fetch(&fetch(B, 5, 1), 11);
    r.on_follower_fetch(&fetch(C, 3, 1), 11);
    // The leader itself has not synced yet.
    assert_eq!(r.high_watermark(), 0);
    let e = r.synced(5, 12);
    assert_eq!(e.high_watermark, Some(3));
    assert!(e.acks.is_empty(), "C has only 3 of the 5");
    let (_, e) = r.on_follower_fetch(&fetch(C, 5, 1), 13);
    assert_eq!(e.high_watermark, Some(5));
    assert_eq!(acks(&e), vec![(1, Ok(()))]);
}

#[test]
fn an_acks_all_append_reported_after_the_high_watermark_passed_it_completes_at_once() {
    let mut r = leader(2, 0);
    // A later append is reported first, synced and fetched by both followers...
    r.appended(8, None, 1);
    r.synced(8, 2);
    r.on_follower_fetch(&fetch(B, 8, 1), 3);
    r.on_follower_fetch(&fetch(C, 8, 1), 3);
    assert_eq!(r.high_watermark(), 8);
    // ...then an earlier one's producer starts to wait: it is committed already.
    let e = r.appended(5, Some(waiter(1)), 4);
    assert_eq!(acks(&e), vec![(1, Ok(()))]);
    assert_eq!(r.waiting_acks(), 0);
}

#[test]
fn a_log_start_moved_by_retention_is_where_a_follower_is_sent_back_to() {
    let mut r = leader(1, 10);
    r.log_start_moved(6);
    assert_eq!(r.log_start_offset(), 6);
    let (answer, _) = r.on_follower_fetch(&fetch(B, 2, -1), 1);
    assert_eq!(answer.error, Some(ResponseError::OffsetOutOfRange));
    assert_eq!(answer.log_start_offset, 6);
    // Never past the log end, never back.
    r.log_start_moved(50);
    assert_eq!(r.log_start_offset(), 10);
    r.log_start_moved(3);
    assert_eq!(r.log_start_offset(), 10);
}

#[test]
fn the_high_watermark_counts_only_what_the_leader_has_on_disk() {
    let mut r = leader(1, 0);
    r.appended(4, None, 1);
    r.on_follower_fetch(&fetch(B, 4, 1), 2);
    r.on_follower_fetch(&fetch(C, 4, 1), 2);
    assert_eq!(r.high_watermark(), 0);
    assert_eq!(r.synced(2, 3).high_watermark, Some(2));
    assert_eq!(r.synced(4, 4).high_watermark, Some(4));
}

#[test]
fn the_high_watermark_counts_only_what_followers_report_synced() {
    let mut r = leader(1, 0);
    r.appended(4, Some(waiter(1)), 1);
    r.synced(4, 1);
    // B and C have everything in their logs, and half of it on their disks.
    let synced_to = |fetch_offset, synced| FollowerFetch {
        durable_offset: synced,
        ..fetch(B, fetch_offset, 1)
    };
    r.on_follower_fetch(&synced_to(4, 2), 2);
    r.on_follower_fetch(
        &FollowerFetch {
            replica: C,
            ..synced_to(4, 2)
        },
        2,
    );
    assert_eq!(r.high_watermark(), 2);
    let (_, e) = r.on_follower_fetch(&synced_to(4, 4), 3);
    assert_eq!(r.high_watermark(), 2, "C has not reported its sync");
    assert!(acks(&e).is_empty());
    let (_, e) = r.on_follower_fetch(
        &FollowerFetch {
            replica: C,
            ..synced_to(4, 4)
        },
        4,
    );
    assert_eq!(r.high_watermark(), 4);
    assert_eq!(acks(&e), vec![(1, Ok(()))]);
}

#[test]
fn a_follower_joins_the_isr_only_with_the_high_watermark_on_its_disk() {
    let mut r = leader(1, 0);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 0);
    r.appended(5, None, 1);
    r.synced(5, 1);
    r.on_follower_fetch(&fetch(B, 5, 1), 1);
    assert_eq!(r.high_watermark(), 5);
    let behind_on_disk = FollowerFetch {
        durable_offset: 4,
        ..fetch(C, 5, 1)
    };
    let (_, e) = r.on_follower_fetch(&behind_on_disk, 2);
    assert_eq!(
        e.alter_partition, None,
        "the high watermark is not on its disk"
    );
    let (_, e) = r.on_follower_fetch(&fetch(C, 5, 1), 3);
    assert!(e.alter_partition.is_some());
}

#[test]
fn acks_all_after_the_isr_shrank_below_min_insync_is_not_enough_replicas_after_append() {
    let mut r = leader(2, 0);
    r.appended(3, Some(waiter(1)), 1);
    r.appended(6, Some(waiter(2)), 1);
    // The controller takes B and C out (their brokers were fenced).
    let e = r.apply_partition_change(&change(Some(A), 1, 2, &[A]), 2);
    assert_eq!(
        acks(&e),
        vec![
            (1, Err(ResponseError::NotEnoughReplicasAfterAppend)),
            (2, Err(ResponseError::NotEnoughReplicasAfterAppend))
        ]
    );
    // An append racing with the shrink is answered the same way at once.
    let e = r.appended(9, Some(waiter(3)), 3);
    assert_eq!(
        acks(&e),
        vec![(3, Err(ResponseError::NotEnoughReplicasAfterAppend))]
    );
}

#[test]
fn kip_966_strict_min_isr_the_high_watermark_stays_while_the_isr_is_under_min_insync() {
    let mut r = leader(2, 0);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A]), 0);
    r.appended(5, None, 1);
    assert_eq!(r.synced(5, 2).high_watermark, None);
    assert_eq!(r.high_watermark(), 0);
    // B catches up and rejoins: the high watermark moves again.
    let (_, e) = r.on_follower_fetch(&fetch(B, 5, 1), 3);
    let proposal = e.alter_partition.expect("B rejoins the ISR");
    let e = r.on_alter_partition_answer(
        &proposal,
        AlterPartitionAnswer::Committed {
            isr: vec![A, B],
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 3,
        },
        4,
    );
    assert_eq!(e.high_watermark, Some(5));
}

#[test]
fn acks_all_times_out_with_request_timed_out() {
    let mut r = leader(1, 0);
    r.appended(
        2,
        Some(AckWaiter {
            token: ProduceToken(7),
            deadline_ms: 500,
        }),
        0,
    );
    assert!(r.tick(499).acks.is_empty());
    assert_eq!(r.next_deadline_ms(), Some(500));
    assert_eq!(
        acks(&r.tick(500)),
        vec![(7, Err(ResponseError::RequestTimedOut))]
    );
    assert_eq!(r.waiting_acks(), 0);
}

#[test]
fn losing_leadership_answers_waiting_appends_not_leader_or_follower() {
    let mut r = leader(1, 0);
    r.appended(2, Some(waiter(1)), 0);
    let e = r.apply_partition_change(&change(Some(B), 2, 2, &[B, C]), 1);
    assert_eq!(acks(&e), vec![(1, Err(ResponseError::NotLeaderOrFollower))]);
    assert_eq!(r.role(), RoleView::Follower { leader: Some(B) });
    // An append that was under way when leadership moved.
    let e = r.appended(4, Some(waiter(2)), 2);
    assert_eq!(acks(&e), vec![(2, Err(ResponseError::NotLeaderOrFollower))]);
}

// ---------------------------------------------------------------------------------------
// High watermark and ISR (KIP-497)
// ---------------------------------------------------------------------------------------

#[test]
fn a_leaders_high_watermark_never_goes_back() {
    let mut r = leader(1, 0);
    r.appended(10, None, 0);
    r.synced(10, 0);
    r.on_follower_fetch(&fetch(B, 8, 1), 1);
    r.on_follower_fetch(&fetch(C, 8, 1), 1);
    assert_eq!(r.high_watermark(), 8);
    // A follower that restarted reports less (a fetch with a lower offset).
    let (answer, e) = r.on_follower_fetch(&fetch(C, 6, 1), 2);
    assert_eq!(answer.high_watermark, 8);
    assert_eq!(e.high_watermark, None);
    assert_eq!(r.high_watermark(), 8);
}

#[test]
fn a_new_leader_waits_to_hear_from_every_isr_member_in_its_epoch() {
    let mut r = leader(1, 5);
    r.on_follower_fetch(&fetch(B, 5, 0), 1);
    assert_eq!(r.high_watermark(), 0, "C has not fetched in this epoch");
    let (_, e) = r.on_follower_fetch(&fetch(C, 5, 0), 2);
    assert_eq!(e.high_watermark, Some(5));
}

#[test]
fn kip_497_a_pending_expansion_counts_for_the_high_watermark_at_once() {
    let mut r = leader(1, 0);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 0);
    r.appended(10, None, 0);
    r.synced(10, 0);
    r.on_follower_fetch(&fetch(B, 10, 1), 1);
    assert_eq!(r.high_watermark(), 10);
    r.appended(20, None, 2);
    r.synced(20, 2);
    // C reaches the high watermark: proposed for the ISR, and counted from now on.
    let (_, e) = r.on_follower_fetch(&fetch(C, 10, 1), 3);
    let proposal = e.alter_partition.expect("C joins");
    assert_eq!(
        proposal.new_isr.iter().map(|m| m.node).collect::<Vec<_>>(),
        vec![A, B, C]
    );
    assert_eq!(r.maximal_isr().unwrap(), vec![A, B, C]);
    assert_eq!(r.isr().unwrap(), vec![A, B]);
    r.on_follower_fetch(&fetch(B, 20, 1), 4);
    assert_eq!(r.high_watermark(), 10, "C, pending, holds it back");
}

#[test]
fn kip_497_a_pending_shrink_keeps_the_old_isr_for_the_high_watermark_until_committed() {
    let mut r = leader(1, 0);
    r.appended(10, None, 0);
    r.synced(10, 0);
    r.on_follower_fetch(&fetch(B, 10, 1), 1);
    r.on_follower_fetch(&fetch(C, 4, 1), 1);
    assert_eq!(r.high_watermark(), 4);
    // C stops fetching: after the lag it is proposed out, but still counts.
    let e = r.tick(1 + LAG_MS + 1);
    let proposal = e.alter_partition.expect("C leaves");
    assert_eq!(
        proposal.new_isr.iter().map(|m| m.node).collect::<Vec<_>>(),
        vec![A, B]
    );
    assert_eq!(proposal.partition_epoch, 1);
    assert_eq!(proposal.leader_epoch, LeaderEpoch(1));
    assert_eq!(r.maximal_isr().unwrap(), vec![A, B, C]);
    assert_eq!(r.high_watermark(), 4);
    let e = r.on_alter_partition_answer(
        &proposal,
        AlterPartitionAnswer::Committed {
            isr: vec![A, B],
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 2,
        },
        LAG_MS + 3,
    );
    assert_eq!(e.high_watermark, Some(10));
    assert_eq!(r.partition_epoch(), 2);
}

#[test]
fn isr_members_carry_the_broker_epochs_of_their_fetches_kip_903() {
    let mut r = leader(1, 0);
    r.on_follower_fetch(&fetch(B, 0, -1), 1);
    let proposal = r.tick(LAG_MS + 5).alter_partition.expect("C leaves");
    assert_eq!(
        proposal.new_isr,
        vec![
            IsrMember {
                node: A,
                broker_epoch: 100
            },
            IsrMember {
                node: B,
                broker_epoch: 10
            }
        ]
    );
}

#[test]
fn a_follower_that_keeps_fetching_up_to_the_previous_log_end_stays_in_sync() {
    let mut r = leader(1, 0);
    let mut end = 0;
    for t in (0..5 * LAG_MS).step_by(1_000) {
        // Each fetch reaches the leader's end as of the previous fetch, never its end now.
        r.on_follower_fetch(&fetch(B, end, 1), t);
        r.on_follower_fetch(&fetch(C, end, 1), t);
        end += 3;
        r.appended(end, None, t);
        r.synced(end, t);
        assert_eq!(r.tick(t).alter_partition, None, "at {t} ms");
    }
}

#[test]
fn a_stuck_follower_leaves_the_isr_after_replica_lag_time_max_ms() {
    let mut r = leader(1, 0);
    r.appended(5, None, 0);
    r.on_follower_fetch(&fetch(B, 5, 1), 1);
    r.on_follower_fetch(&fetch(C, 0, 1), 1);
    // C was caught up when the epoch began (time 0): it has the lag period from then.
    assert_eq!(r.tick(LAG_MS).alter_partition, None);
    let proposal = r.tick(LAG_MS + 1).alter_partition.expect("C leaves");
    assert_eq!(proposal.new_isr.len(), 2);
    // One change at a time.
    assert_eq!(r.tick(LAG_MS + 2).alter_partition, None);
}

#[test]
fn a_follower_joins_the_isr_once_at_the_high_watermark_and_past_the_epoch_start() {
    // The epoch starts at 5; C has only 4.
    let mut r = leader(1, 5);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 0);
    r.on_follower_fetch(&fetch(B, 5, 0), 1);
    let (_, e) = r.on_follower_fetch(&fetch(C, 4, 0), 2);
    assert_eq!(e.alter_partition, None, "not past the epoch start");
    let (_, e) = r.on_follower_fetch(&fetch(C, 5, 0), 3);
    assert!(e.alter_partition.is_some());
}

#[test]
fn a_caught_up_follower_outside_the_isr_holds_the_high_watermark_until_it_joins() {
    // A and B in the ISR; C outside, caught up once (it reached the leader's log end).
    let setup = |ineligible: &[NodeId]| {
        let mut r = leader(1, 0);
        r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 0);
        r.set_ineligible_replicas(ineligible.iter().copied());
        r.appended(10, None, 0);
        r.synced(10, 0);
        let (_, e) = r.on_follower_fetch(&fetch(C, 10, 1), 1);
        if let Some(proposal) = e.alter_partition {
            // Refused, to see the waiting rule on its own.
            r.on_alter_partition_answer(
                &proposal,
                AlterPartitionAnswer::Error(ResponseError::IneligibleReplica),
                1,
            );
        }
        r.appended(20, None, 2);
        r.synced(20, 2);
        // C reaches the end as of its previous fetch (still caught up), not the new end.
        r.on_follower_fetch(&fetch(C, 12, 1), 3);
        r.on_follower_fetch(&fetch(B, 20, 1), 3);
        r
    };
    let r = setup(&[]);
    assert_eq!(r.isr().unwrap(), vec![A, B]);
    assert_eq!(r.high_watermark(), 12, "the caught-up C is waited for");
    // Unless it may not join (KIP-841).
    let r = setup(&[C]);
    assert_eq!(r.high_watermark(), 20);
}

#[test]
fn kip_841_fenced_or_shutting_down_brokers_do_not_join_the_isr() {
    let mut r = leader(1, 0);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 0);
    r.set_ineligible_replicas([C]);
    let (_, e) = r.on_follower_fetch(&fetch(C, 0, -1), 1);
    assert_eq!(e.alter_partition, None);
    r.set_ineligible_replicas([]);
    let (_, e) = r.on_follower_fetch(&fetch(C, 0, -1), 2);
    assert!(e.alter_partition.is_some());
}

fn pending_shrink(r: &mut ReplicaState) -> AlterPartitionProposal {
    r.on_follower_fetch(&fetch(B, 0, -1), 1);
    r.tick(LAG_MS + 5).alter_partition.expect("C leaves")
}

#[test]
fn alter_partition_refusals_that_say_nothing_was_applied_revert_to_the_committed_isr() {
    for error in [
        ResponseError::OperationNotAttempted,
        ResponseError::IneligibleReplica,
    ] {
        let mut r = leader(1, 0);
        let proposal = pending_shrink(&mut r);
        r.on_alter_partition_answer(&proposal, AlterPartitionAnswer::Error(error), LAG_MS + 6);
        assert!(!r.isr_change_pending(), "{error:?}");
        assert_eq!(r.isr().unwrap(), vec![A, B, C]);
        // Not proposed again at once, but after the retry delay.
        assert_eq!(r.tick(LAG_MS + 7).alter_partition, None);
        assert!(r.tick(LAG_MS + 60).alter_partition.is_some());
    }
}

#[test]
fn alter_partition_refusals_from_a_newer_state_wait_for_the_metadata() {
    for error in [
        ResponseError::FencedLeaderEpoch,
        ResponseError::InvalidUpdateVersion,
        ResponseError::UnknownTopicOrPartition,
    ] {
        let mut r = leader(1, 0);
        let proposal = pending_shrink(&mut r);
        r.on_alter_partition_answer(&proposal, AlterPartitionAnswer::Error(error), LAG_MS + 6);
        assert!(r.isr_change_pending(), "{error:?}");
        assert_eq!(r.tick(LAG_MS + 1_000).alter_partition, None, "{error:?}");
        // The metadata with the newer partition epoch settles it.
        r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), LAG_MS + 1_001);
        assert!(!r.isr_change_pending());
        assert_eq!(r.isr().unwrap(), vec![A, B]);
    }
}

#[test]
fn alter_partition_without_an_answer_is_sent_again() {
    let mut r = leader(1, 0);
    let proposal = pending_shrink(&mut r);
    r.on_alter_partition_answer(
        &proposal,
        AlterPartitionAnswer::Error(ResponseError::RequestTimedOut),
        LAG_MS + 6,
    );
    assert_eq!(r.tick(LAG_MS + 20).alter_partition, None);
    assert_eq!(r.tick(LAG_MS + 56).alter_partition, Some(proposal.clone()));
    // An answer to something else, or a second answer, changes nothing.
    let mut other = proposal.clone();
    other.partition_epoch = 0;
    r.on_alter_partition_answer(
        &other,
        AlterPartitionAnswer::Committed {
            isr: vec![A],
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 9,
        },
        LAG_MS + 57,
    );
    assert_eq!(r.isr().unwrap(), vec![A, B, C]);
    // An answer about another leader epoch leaves the change pending.
    r.on_alter_partition_answer(
        &proposal,
        AlterPartitionAnswer::Committed {
            isr: vec![A, B],
            leader_epoch: LeaderEpoch(2),
            partition_epoch: 3,
        },
        LAG_MS + 58,
    );
    assert!(r.isr_change_pending());
}

#[test]
fn a_partition_change_seen_again_does_not_clear_a_pending_isr_change() {
    let mut r = leader(1, 0);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 0);
    let (_, e) = r.on_follower_fetch(&fetch(C, 0, -1), 1);
    assert!(e.alter_partition.is_some());
    // The same state again (a repeated delivery): C must still count.
    r.apply_partition_change(&change(Some(A), 1, 2, &[A, B]), 2);
    assert_eq!(r.maximal_isr().unwrap(), vec![A, B, C]);
    // An older one is ignored too.
    r.apply_partition_change(&change(Some(A), 1, 1, &[A]), 3);
    assert_eq!(r.isr().unwrap(), vec![A, B]);
}

// ---------------------------------------------------------------------------------------
// Follower fetches at the leader (KIP-320, KIP-903)
// ---------------------------------------------------------------------------------------

#[test]
fn kip_320_fetches_with_an_older_epoch_are_fenced_and_newer_ones_unknown() {
    let mut r = leader(1, 0);
    let mut old = fetch(B, 0, -1);
    old.current_leader_epoch = 0;
    assert_eq!(
        r.on_follower_fetch(&old, 1).0.error,
        Some(ResponseError::FencedLeaderEpoch)
    );
    let mut new = fetch(B, 0, -1);
    new.current_leader_epoch = 2;
    assert_eq!(
        r.on_follower_fetch(&new, 1).0.error,
        Some(ResponseError::UnknownLeaderEpoch)
    );
    // A follower is not where followers fetch.
    let mut f = follower(log(0, &[]));
    let (answer, _) = f.on_follower_fetch(&fetch(C, 0, -1), 1);
    assert_eq!(answer.error, Some(ResponseError::NotLeaderOrFollower));
    assert_eq!(
        answer.leader_id, A.0,
        "KIP-951: the answer names the leader"
    );
}

#[test]
fn a_fetch_from_a_node_that_is_not_a_replica_is_unknown_leader_epoch() {
    let mut r = leader(1, 0);
    assert_eq!(
        r.on_follower_fetch(&fetch(NodeId(9), 0, -1), 1).0.error,
        Some(ResponseError::UnknownLeaderEpoch)
    );
    let mut no_epoch = fetch(NodeId(9), 0, -1);
    no_epoch.current_leader_epoch = -1;
    assert_eq!(
        r.on_follower_fetch(&no_epoch, 1).0.error,
        Some(ResponseError::NotLeaderOrFollower)
    );
}

#[test]
fn kip_320_a_follower_past_the_end_of_its_epoch_gets_the_diverging_epoch_and_no_records() {
    // Leader: epoch 0 at 0, epoch 2 at 10, epoch 3 (its own) at 15.
    let mut r = ReplicaState::new(A, 100, config(1), log(15, &[(0, 0), (2, 10)]));
    r.apply_partition_change(&change(Some(A), 3, 1, &[A, B, C]), 0);
    let mut f = fetch(B, 12, 0);
    f.current_leader_epoch = 3;
    // B wrote epoch 0 up to 12; epoch 0 ends at 10 here.
    let (answer, e) = r.on_follower_fetch(&f, 1);
    assert_eq!(
        answer.diverging_epoch,
        Some(EpochEndOffset {
            epoch: 0,
            end_offset: 10
        })
    );
    assert_eq!(answer.read_from, None);
    assert!(e.is_empty());
    assert_eq!(
        r.follower_progress(B).unwrap().log_end_offset,
        None,
        "nothing recorded"
    );
    // B has epoch 1, which this leader never knew: the largest below it is 0, ending at 10.
    f.last_fetched_epoch = 1;
    f.fetch_offset = 10;
    assert_eq!(
        r.on_follower_fetch(&f, 2).0.diverging_epoch,
        Some(EpochEndOffset {
            epoch: 0,
            end_offset: 10
        })
    );
    // Within the epoch: records from the fetch offset.
    f.last_fetched_epoch = 2;
    f.fetch_offset = 15;
    let (answer, _) = r.on_follower_fetch(&f, 3);
    assert_eq!((answer.diverging_epoch, answer.read_from), (None, Some(15)));
}

#[test]
fn fetch_offsets_outside_the_log_are_out_of_range() {
    let mut r = leader(1, 5);
    assert_eq!(
        r.on_follower_fetch(&fetch(B, 6, -1), 1).0.error,
        Some(ResponseError::OffsetOutOfRange)
    );
    assert_eq!(r.on_follower_fetch(&fetch(B, 5, -1), 1).0.error, None);
}

#[test]
fn kip_903_a_fetch_from_an_older_process_of_the_follower_is_refused() {
    let mut r = leader(1, 0);
    let mut newer = fetch(B, 0, -1);
    newer.broker_epoch = 20;
    assert_eq!(r.on_follower_fetch(&newer, 1).0.error, None);
    let (answer, _) = r.on_follower_fetch(&fetch(B, 0, -1), 2);
    assert_eq!(answer.error, Some(ResponseError::NotLeaderOrFollower));
}

#[test]
fn a_new_leader_records_its_epoch_start_and_forgets_the_followers_positions() {
    let mut r = leader(1, 0);
    r.appended(8, None, 0);
    r.synced(8, 0);
    r.on_follower_fetch(&fetch(B, 8, 1), 1);
    r.apply_partition_change(&change(Some(B), 2, 2, &[A, B, C]), 2);
    // Leader again two epochs later.
    let e = r.apply_partition_change(&change(Some(A), 3, 3, &[A, B, C]), 3);
    assert_eq!(
        e.log,
        vec![LogOp::AssignEpoch {
            epoch: 3,
            start_offset: 8
        }]
    );
    assert_eq!(r.epochs().entries(), &[(1, 0), (3, 8)]);
    assert_eq!(r.follower_progress(B).unwrap().log_end_offset, None);
}

#[test]
fn kip_207_a_new_leader_behind_its_epoch_start_answers_offset_not_available_for_the_latest_offset()
{
    // A leads epoch 1 from offset 10; its high watermark (0) is what it knew before.
    let mut r = leader(1, 10);
    let latest = |r: &ReplicaState| r.listed_offset(OffsetQuery::Latest, r.high_watermark());
    let search = |r: &ReplicaState, found| {
        r.listed_offset(OffsetQuery::Search { found }, r.high_watermark())
    };
    let earliest = |r: &ReplicaState| {
        r.listed_offset(
            OffsetQuery::Earliest {
                log_start_offset: 0,
            },
            r.high_watermark(),
        )
    };
    assert!(r.high_watermark_behind_epoch_start());
    assert_eq!(latest(&r), Err(ResponseError::OffsetNotAvailable));
    assert_eq!(earliest(&r), Ok(Some(0)));
    assert_eq!(search(&r, Some(3)), Err(ResponseError::OffsetNotAvailable));
    assert_eq!(search(&r, None), Err(ResponseError::OffsetNotAvailable));

    // B has everything, C only up to 6: the high watermark moves to 6, still behind.
    r.on_follower_fetch(&fetch(B, 10, 0), 1);
    r.on_follower_fetch(&fetch(C, 6, 0), 1);
    assert_eq!(r.high_watermark(), 6);
    assert!(r.high_watermark_behind_epoch_start());
    assert_eq!(latest(&r), Err(ResponseError::OffsetNotAvailable));
    assert_eq!(earliest(&r), Ok(Some(0)));
    assert_eq!(search(&r, Some(3)), Ok(Some(3)), "below the high watermark");
    assert_eq!(search(&r, Some(8)), Err(ResponseError::OffsetNotAvailable));

    // C reaches the epoch start: answered as usual from now on.
    r.on_follower_fetch(&fetch(C, 10, 0), 2);
    assert_eq!(r.high_watermark(), 10);
    assert!(!r.high_watermark_behind_epoch_start());
    assert_eq!(latest(&r), Ok(Some(10)));
    assert_eq!(earliest(&r), Ok(Some(0)));
    assert_eq!(search(&r, Some(8)), Ok(Some(8)));
    assert_eq!(search(&r, None), Ok(None));
    // Appended but not committed: a search finds nothing there.
    r.appended(15, None, 3);
    r.synced(15, 3);
    assert_eq!(r.high_watermark(), 10);
    assert_eq!(search(&r, Some(12)), Ok(None));
    assert_eq!(latest(&r), Ok(Some(10)));
    // read_committed: nothing at or past the last stable offset either.
    assert_eq!(
        r.listed_offset(OffsetQuery::Search { found: Some(8) }, 7),
        Ok(None)
    );
}

#[test]
fn kip_207_a_leader_whose_high_watermark_covers_its_log_is_never_behind() {
    let r = leader(1, 0);
    assert!(!r.high_watermark_behind_epoch_start());
    assert_eq!(r.listed_offset(OffsetQuery::Latest, 0), Ok(Some(0)));
    // Restarted from a checkpoint at the log end, and leading again.
    let mut restarted = log(10, &[(0, 0)]);
    restarted.high_watermark = 10;
    let mut r = ReplicaState::new(A, 100, config(1), restarted);
    r.apply_partition_change(&change(Some(A), 1, 1, &[A, B, C]), 0);
    assert!(!r.high_watermark_behind_epoch_start());
    assert_eq!(r.listed_offset(OffsetQuery::Latest, 10), Ok(Some(10)));
    // Followers are never asked, but would not be behind either.
    assert!(!follower(log(10, &[(0, 0)])).high_watermark_behind_epoch_start());
}

#[test]
fn kip_207_a_leader_alone_in_the_isr_is_behind_until_min_insync_replicas_are_back() {
    // Alone in the ISR with min.insync.replicas=1: its own log is the high watermark.
    let mut r = leader(1, 10);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A]), 0);
    assert_eq!(r.high_watermark(), 10);
    assert!(!r.high_watermark_behind_epoch_start());

    // With min.insync.replicas=2 the high watermark cannot move (KIP-966): behind until
    // B has caught up and is back in the ISR.
    let mut r = leader(2, 10);
    r.apply_partition_change(&change(Some(A), 1, 2, &[A]), 0);
    assert_eq!(r.high_watermark(), 0);
    assert_eq!(
        r.listed_offset(OffsetQuery::Latest, 0),
        Err(ResponseError::OffsetNotAvailable)
    );
    r.tick(LAG_MS * 10);
    assert!(
        r.high_watermark_behind_epoch_start(),
        "time alone changes nothing"
    );
    let (_, e) = r.on_follower_fetch(&fetch(B, 10, 0), LAG_MS * 10 + 1);
    let proposal = e.alter_partition.expect("B rejoins the ISR");
    r.on_alter_partition_answer(
        &proposal,
        AlterPartitionAnswer::Committed {
            isr: vec![A, B],
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 3,
        },
        LAG_MS * 10 + 2,
    );
    assert_eq!(r.high_watermark(), 10);
    assert_eq!(r.listed_offset(OffsetQuery::Latest, 10), Ok(Some(10)));
}

// ---------------------------------------------------------------------------------------
// The follower
// ---------------------------------------------------------------------------------------

#[test]
fn a_follower_fetches_from_its_log_end_with_its_last_epoch_and_reports_its_synced_end() {
    let mut f = follower(log(5, &[(0, 0)]));
    let position = f.next_fetch(0).expect("a fetch is due");
    assert_eq!(
        position,
        FetchPosition {
            leader: A,
            current_leader_epoch: 1,
            fetch_offset: 5,
            synced_offset: 5,
            last_fetched_epoch: 0,
            log_start_offset: 0
        }
    );
    assert_eq!(f.next_fetch(0), None, "one fetch in flight");
    let records = batches(&[(5, 1, 2)]);
    let (outcome, e) = f.on_fetch_response(&asked(&position), &ok_header(6, &records), &records, 1);
    assert_eq!(
        outcome,
        FetchOutcome::Appended {
            batches: 1,
            bytes: records.len()
        }
    );
    assert_eq!(
        e.log,
        vec![LogOp::AppendAsFollower {
            records: records.clone(),
            base_offset: 5,
            end_offset: 7
        }]
    );
    assert_eq!(f.log_end_offset(), 7);
    assert_eq!(f.epochs().entries(), &[(0, 0), (1, 5)]);
    // The follower's high watermark: the leader's, as far as its own log goes.
    assert_eq!(f.high_watermark(), 6);
    // Not on disk yet: the follower asks for more while it syncs, saying what is synced.
    assert!(f.needs_sync());
    let next = f
        .next_fetch(2)
        .expect("everything below the last fetch is on disk");
    assert_eq!((next.fetch_offset, next.synced_offset), (7, 5));
    // Nothing new from the leader, the sync still running: the follower asks again, but
    // only until its oldest recent fetch offset is past what is on disk.
    let empty = Bytes::new();
    let mut asked_from = vec![5, 7];
    let mut next = Some(next);
    while let Some(position) = next {
        let (outcome, _) = f.on_fetch_response(&asked(&position), &ok_header(7, &empty), &empty, 2);
        assert_eq!(
            outcome,
            FetchOutcome::Appended {
                batches: 0,
                bytes: 0
            }
        );
        next = f.next_fetch(2);
        if let Some(p) = next {
            asked_from.push(p.fetch_offset);
        }
    }
    assert_eq!(asked_from.len(), MAX_UNSYNCED_ANSWERS + 1);
    assert_eq!(
        asked_from.iter().filter(|&&o| o == 7).count(),
        MAX_UNSYNCED_ANSWERS
    );
    f.synced(7, 3);
    let next = f.next_fetch(3).unwrap();
    assert_eq!((next.fetch_offset, next.synced_offset), (7, 7));
}

#[test]
fn a_follower_with_unsynced_records_and_no_fetch_yet_waits_for_its_sync() {
    let mut f = follower(log(5, &[(0, 0)]));
    let position = f.next_fetch(0).unwrap();
    let records = batches(&[(5, 1, 2)]);
    f.on_fetch_response(&asked(&position), &ok_header(6, &records), &records, 1);
    // A new epoch: the previous fetch position means nothing any more.
    f.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 2);
    assert!(f.needs_sync());
    assert_eq!(f.next_fetch(2), None);
    f.synced(7, 3);
    let next = f.next_fetch(3).unwrap();
    assert_eq!((next.fetch_offset, next.synced_offset), (7, 7));
}

#[test]
fn a_follower_never_appends_a_batch_that_fails_its_crc() {
    let mut f = follower(log(0, &[]));
    let position = f.next_fetch(0).unwrap();
    let mut damaged = batches(&[(0, 1, 3)]).to_vec();
    let last = damaged.len() - 2;
    damaged[last] ^= 0x10;
    let damaged = Bytes::from(damaged);
    let (outcome, e) = f.on_fetch_response(&asked(&position), &ok_header(3, &damaged), &damaged, 1);
    assert!(
        matches!(outcome, FetchOutcome::Refused(ref why) if why.contains("CRC")),
        "{outcome:?}"
    );
    assert!(e.log.is_empty());
    assert_eq!(f.log_end_offset(), 0);
    // It fetches again after the backoff.
    assert_eq!(f.next_fetch(50), None);
    assert!(f.next_fetch(101).is_some());
}

#[test]
fn a_follower_refuses_batches_that_do_not_continue_its_log_or_break_epoch_order() {
    let cases: Vec<(&str, Bytes)> = vec![
        ("a gap", batches(&[(1, 1, 1)])),
        ("an overlap", batches(&[(0, 1, 2), (1, 1, 1)])),
        ("an epoch above the leader's", batches(&[(0, 2, 1)])),
        ("an epoch going down", batches(&[(0, 1, 1), (1, 0, 1)])),
        ("a partial batch", batches(&[(0, 1, 2)]).slice(..40)),
    ];
    for (what, records) in cases {
        let mut f = follower(log(0, &[]));
        let position = f.next_fetch(0).unwrap();
        let (outcome, e) =
            f.on_fetch_response(&asked(&position), &ok_header(0, &records), &records, 1);
        assert!(
            matches!(outcome, FetchOutcome::Refused(_)),
            "{what}: {outcome:?}"
        );
        assert!(e.log.is_empty(), "{what}");
    }
    // Epochs older than the follower's latest are refused too.
    let mut f = follower(log(4, &[(1, 0)]));
    let position = f.next_fetch(0).unwrap();
    let records = batches(&[(4, 0, 1)]);
    let (outcome, _) = f.on_fetch_response(&asked(&position), &ok_header(0, &records), &records, 1);
    assert!(matches!(outcome, FetchOutcome::Refused(_)));
}

#[test]
fn kip_279_a_follower_that_knows_the_leaders_epoch_truncates_at_the_earlier_end() {
    // Follower: epoch 0 at 0, epoch 1 at 10, log end 15. Leader: epoch 1 ends at 12.
    let mut f = ReplicaState::new(B, 10, config(1), log(15, &[(0, 0), (1, 10)]));
    f.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 0);
    let position = f.next_fetch(0).unwrap();
    assert_eq!(position.last_fetched_epoch, 1);
    let header = PartitionHeader {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 1,
            end_offset: 12,
        }),
        ..ok_header(11, &Bytes::new())
    };
    let (outcome, e) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 12 });
    assert_eq!(e.log, vec![LogOp::TruncateTo { offset: 12 }]);
    assert_eq!(f.log_end_offset(), 12);
    assert_eq!(f.epochs().entries(), &[(0, 0), (1, 10)]);
}

#[test]
fn kip_279_a_follower_that_does_not_know_the_leaders_epoch_truncates_to_its_own_and_asks_again() {
    // Follower: epochs 0 at 0, 2 at 10, 3 at 14; end 20. Leader answers epoch 1 ending at
    // 11, an epoch the follower never saw: it cuts at the end of its largest epoch below
    // (0, ending at 10) and compares again from there.
    let mut f = ReplicaState::new(B, 10, config(1), log(20, &[(0, 0), (2, 10), (3, 14)]));
    f.apply_partition_change(&change(Some(A), 4, 2, &[A, B, C]), 0);
    let position = f.next_fetch(0).unwrap();
    let header = PartitionHeader {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 1,
            end_offset: 11,
        }),
        ..ok_header(5, &Bytes::new())
    };
    let (outcome, _) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 10 });
    assert_eq!(f.epochs().entries(), &[(0, 0)]);
    let next = f.next_fetch(2).unwrap();
    assert_eq!((next.fetch_offset, next.last_fetched_epoch), (10, 0));
}

#[test]
fn truncation_follows_the_epochs_and_never_the_high_watermark() {
    // The follower's high watermark is 18, but the logs agree only up to 16.
    let mut local = log(20, &[(0, 0), (1, 16)]);
    local.high_watermark = 18;
    let mut f = ReplicaState::new(B, 10, config(1), local);
    f.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 0);
    let position = f.next_fetch(0).unwrap();
    let header = PartitionHeader {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 0,
            end_offset: 16,
        }),
        ..ok_header(16, &Bytes::new())
    };
    let (outcome, _) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 16 });
    // A follower with nothing to cut keeps its whole log, whatever its high watermark.
    let mut g = ReplicaState::new(C, 10, config(1), log(20, &[(0, 0)]));
    g.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 0);
    let position = g.next_fetch(0).unwrap();
    let header = PartitionHeader {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 0,
            end_offset: 30,
        }),
        ..ok_header(3, &Bytes::new())
    };
    let (outcome, _) = g.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 20 });
    assert_eq!(g.log_end_offset(), 20);
}

#[test]
fn an_epoch_with_no_batch_is_dropped_even_when_nothing_else_is_cut() {
    // This node led epoch 3 from 10 and wrote nothing in it; the new leader never had
    // epoch 3, and its epoch 2 ends at 10.
    let mut f = ReplicaState::new(B, 10, config(1), log(10, &[(0, 0), (2, 5), (3, 10)]));
    f.apply_partition_change(&change(Some(A), 4, 2, &[A, B, C]), 0);
    let position = f.next_fetch(0).unwrap();
    assert_eq!(position.last_fetched_epoch, 3);
    let header = PartitionHeader {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 2,
            end_offset: 10,
        }),
        ..ok_header(5, &Bytes::new())
    };
    let (outcome, e) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 10 });
    assert_eq!(e.log, vec![LogOp::TruncateTo { offset: 10 }]);
    assert_eq!(f.next_fetch(2).unwrap().last_fetched_epoch, 2);
}

#[test]
fn a_fenced_follower_waits_for_newer_metadata() {
    let mut f = follower(log(0, &[]));
    let position = f.next_fetch(0).unwrap();
    let header = PartitionHeader::error(TOPIC, 0, ResponseError::FencedLeaderEpoch.code());
    let (outcome, _) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(
        outcome,
        FetchOutcome::LeaderError(ResponseError::FencedLeaderEpoch)
    );
    assert_eq!(f.next_fetch(1_000_000), None);
    f.apply_partition_change(&change(Some(C), 2, 2, &[B, C]), 1_000_001);
    assert_eq!(f.next_fetch(1_000_001).unwrap().leader, C);
    // Other errors back off and retry.
    let position = f.next_fetch(0).or_else(|| {
        f.fetch_failed(1_000_001);
        f.next_fetch(1_000_200)
    });
    let position = position.unwrap();
    let header = PartitionHeader::error(TOPIC, 0, ResponseError::UnknownLeaderEpoch.code());
    f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1_000_300);
    assert_eq!(f.next_fetch(1_000_350), None);
    assert!(f.next_fetch(1_000_400).is_some());
}

#[test]
fn answers_to_fetches_this_follower_no_longer_stands_behind_are_ignored() {
    let mut f = follower(log(0, &[]));
    let position = f.next_fetch(0).unwrap();
    let records = batches(&[(0, 1, 1)]);
    // The epoch moved on while the fetch was out.
    f.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 1);
    let (outcome, e) = f.on_fetch_response(&asked(&position), &ok_header(1, &records), &records, 2);
    assert_eq!(outcome, FetchOutcome::Stale);
    assert!(e.is_empty());
    // An answer to a fetch never sent.
    let mut g = follower(log(0, &[]));
    let (outcome, _) = g.on_fetch_response(&asked(&position), &ok_header(1, &records), &records, 2);
    assert_eq!(outcome, FetchOutcome::Stale);
}

#[test]
fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    let mut f = follower(log(3, &[(0, 0)]));
    let position = f.next_fetch(0).unwrap();
    let header = PartitionHeader {
        log_start_offset: 50,
        ..PartitionHeader::error(TOPIC, 0, ResponseError::OffsetOutOfRange.code())
    };
    let (outcome, e) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 50 });
    assert_eq!(e.log, vec![LogOp::TruncateFullyAndStartAt { offset: 50 }]);
    assert_eq!((f.log_start_offset(), f.log_end_offset()), (50, 50));
}

#[test]
fn kip_107_a_follower_moves_its_log_start_with_the_leader_up_to_its_high_watermark() {
    let mut f = follower(log(10, &[(0, 0)]));
    let position = f.next_fetch(0).unwrap();
    let header = PartitionHeader {
        log_start_offset: 8,
        ..ok_header(6, &Bytes::new())
    };
    let (_, e) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(e.log, vec![LogOp::AdvanceLogStart { offset: 6 }]);
    assert_eq!(f.log_start_offset(), 6);
}

#[test]
fn kip_320_offset_for_leader_epoch_answers_clients_from_the_leader() {
    let mut r = ReplicaState::new(A, 100, config(1), log(15, &[(0, 0), (2, 10)]));
    r.apply_partition_change(&change(Some(A), 3, 1, &[A, B, C]), 0);
    assert_eq!(
        r.offset_for_leader_epoch(3, 1),
        Ok(EpochEndOffset {
            epoch: 0,
            end_offset: 10
        })
    );
    assert_eq!(
        r.offset_for_leader_epoch(-1, 2),
        Ok(EpochEndOffset {
            epoch: 2,
            end_offset: 15
        })
    );
    assert_eq!(
        r.offset_for_leader_epoch(-1, 3),
        Ok(EpochEndOffset {
            epoch: 3,
            end_offset: 15
        })
    );
    assert_eq!(
        r.offset_for_leader_epoch(2, 1),
        Err(ResponseError::FencedLeaderEpoch)
    );
    assert_eq!(
        r.offset_for_leader_epoch(4, 1),
        Err(ResponseError::UnknownLeaderEpoch)
    );
    let f = follower(log(0, &[]));
    assert_eq!(
        f.offset_for_leader_epoch(1, 0),
        Err(ResponseError::NotLeaderOrFollower)
    );
    // Consumers' fetches may go to the leader only; the epoch is checked first.
    assert_eq!(
        f.check_leader_epoch(0, false),
        Err(ResponseError::FencedLeaderEpoch)
    );
    assert_eq!(f.check_leader_epoch(1, false), Ok(()));
}

#[test]
fn a_node_dropped_from_the_replicas_stops_leading_and_fetching() {
    let mut r = leader(1, 0);
    r.appended(2, Some(waiter(1)), 0);
    let e = r.apply_partition_change(
        &LeaderAndIsr {
            replicas: vec![B, C],
            isr: vec![B, C],
            leader: Some(B),
            leader_epoch: LeaderEpoch(2),
            partition_epoch: 2,
        },
        1,
    );
    assert_eq!(acks(&e), vec![(1, Err(ResponseError::NotLeaderOrFollower))]);
    assert_eq!(r.role(), RoleView::None);
    assert_eq!(r.next_fetch(2), None);
}

// ---------------------------------------------------------------------------------------
// Two state machines talking
// ---------------------------------------------------------------------------------------

/// Moves one fetch from follower `f` to leader `l` and back, with a log of each as bytes.
fn exchange(
    l: &mut ReplicaState,
    l_log: &[u8],
    f: &mut ReplicaState,
    f_log: &mut Vec<u8>,
    now: i64,
) -> FetchOutcome {
    let Some(position) = f.next_fetch(now) else {
        return FetchOutcome::Stale;
    };
    let request = asked(&position);
    let follower_fetch = FollowerFetch {
        replica: f.local(),
        broker_epoch: 10,
        current_leader_epoch: request.current_leader_epoch,
        fetch_offset: request.fetch_offset,
        durable_offset: request.durable_offset(),
        last_fetched_epoch: request.last_fetched_epoch,
        log_start_offset: request.log_start_offset,
    };
    let (answer, _) = l.on_follower_fetch(&follower_fetch, now);
    let records = match answer.read_from {
        Some(from) => Bytes::copy_from_slice(&l_log[byte_position(l_log, from)..]),
        None => Bytes::new(),
    };
    let header = answer.header(TOPIC, 0, records.len() as u32);
    let (outcome, e) = f.on_fetch_response(&request, &header, &records, now);
    for op in e.log {
        match op {
            LogOp::AppendAsFollower { records, .. } => f_log.extend_from_slice(&records),
            LogOp::TruncateTo { offset } => {
                let at = byte_position(f_log, offset);
                f_log.truncate(at);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let end = f.log_end_offset();
    f.synced(end, now);
    outcome
}

/// The byte position of the batch starting at `offset` in a log of whole batches (the
/// log's length at its end).
fn byte_position(log: &[u8], offset: i64) -> usize {
    for (position, b) in wharf_protocol::batch::batches(log) {
        let info = wharf_protocol::batch::validate_batch(b, b.len()).unwrap();
        if info.base_offset >= offset {
            return position;
        }
    }
    log.len()
}

#[test]
fn a_returning_replica_converges_on_the_new_leaders_log() {
    // B led epoch 1 and wrote 0..6 (3 batches of 2); A had 0..2 of it when B died, became
    // leader in epoch 2 and wrote 2..5 (a batch of 3).
    let b_log = batches(&[(0, 1, 2), (2, 1, 2), (4, 1, 2)]).to_vec();
    let a_log = batches(&[(0, 1, 2), (2, 2, 3)]).to_vec();
    let mut a = ReplicaState::new(A, 100, config(1), log(5, &[(1, 0), (2, 2)]));
    a.apply_partition_change(&change(Some(A), 2, 5, &[A, B]), 0);
    a.synced(5, 0);
    let mut b = ReplicaState::new(B, 11, config(1), log(6, &[(1, 0)]));
    b.apply_partition_change(&change(Some(A), 2, 5, &[A, B]), 0);
    let mut b_bytes = b_log;
    let outcome = exchange(&mut a, &a_log, &mut b, &mut b_bytes, 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 2 });
    let outcome = exchange(&mut a, &a_log, &mut b, &mut b_bytes, 2);
    assert!(matches!(outcome, FetchOutcome::Appended { batches: 1, .. }));
    assert_eq!(b_bytes, a_log);
    assert_eq!(b.epochs(), a.epochs());
    // The next fetch tells the leader B has it all: the high watermark covers it.
    exchange(&mut a, &a_log, &mut b, &mut b_bytes, 3);
    assert_eq!(a.high_watermark(), 5);
    exchange(&mut a, &a_log, &mut b, &mut b_bytes, 4);
    assert_eq!(b.high_watermark(), 5);
}

// ---------------------------------------------------------------------------------------
// The high-watermark checkpoint
// ---------------------------------------------------------------------------------------

fn checkpointed_log(end: i64, high_watermark: i64) -> LocalLog {
    LocalLog {
        high_watermark,
        ..log(end, &[(0, 0)])
    }
}

#[test]
fn a_restarted_leader_shows_its_checkpointed_high_watermark_before_any_follower_fetches() {
    let mut r = ReplicaState::new(A, 100, config(2), checkpointed_log(20, 15));
    assert_eq!(r.high_watermark(), 15);
    r.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 0);
    assert!(r.is_leader());
    assert_eq!(
        r.high_watermark(),
        15,
        "what was committed before the restart is shown at once"
    );
    // What it has beyond the checkpoint waits for the followers: B has 18, C has not
    // fetched in this epoch.
    let (answer, e) = r.on_follower_fetch(&fetch_in(B, 18, 0, 2), 1);
    assert_eq!(answer.error, None);
    assert_eq!(e.high_watermark, None);
    assert_eq!(r.high_watermark(), 15);
    let (_, e) = r.on_follower_fetch(&fetch_in(C, 20, 0, 2), 2);
    assert_eq!(e.high_watermark, Some(18));
}

#[test]
fn a_checkpointed_high_watermark_is_capped_at_the_log_end() {
    // The log lost a tail the checkpoint covered (a follower's unsynced appends).
    let r = ReplicaState::new(B, 10, config(1), checkpointed_log(12, 15));
    assert_eq!(r.high_watermark(), 12);
    let mut below = checkpointed_log(12, 3);
    below.log_start_offset = 5;
    let r = ReplicaState::new(B, 10, config(1), below);
    assert_eq!(r.high_watermark(), 5, "raised to the log start");
}

#[test]
fn a_restarted_leader_never_moves_its_high_watermark_back_to_what_followers_have() {
    let mut r = ReplicaState::new(A, 100, config(1), checkpointed_log(20, 15));
    r.apply_partition_change(&change(Some(A), 2, 2, &[A, B]), 0);
    // B restarted too and lost its unsynced tail: it is at 10, below the checkpoint.
    let (answer, e) = r.on_follower_fetch(&fetch_in(B, 10, 0, 2), 1);
    assert_eq!(answer.high_watermark, 15);
    assert_eq!(e.high_watermark, None);
    assert_eq!(r.high_watermark(), 15);
}

#[test]
fn the_high_watermark_is_checkpointed_when_it_changed_at_most_once_per_interval() {
    let mut r = leader(1, 0);
    assert_eq!(
        r.high_watermark_checkpoint_due(0),
        None,
        "unchanged since the open"
    );
    r.appended(5, None, 10);
    r.synced(5, 10);
    r.on_follower_fetch(&fetch(B, 5, 1), 10);
    r.on_follower_fetch(&fetch(C, 5, 1), 10);
    assert_eq!(r.high_watermark(), 5);
    assert_eq!(r.high_watermark_checkpoint_due(10), Some(5));
    assert_eq!(r.high_watermark_checkpoint_due(11), None, "recorded");
    r.appended(8, None, 20);
    r.synced(8, 20);
    r.on_follower_fetch(&fetch(B, 8, 1), 20);
    r.on_follower_fetch(&fetch(C, 8, 1), 20);
    assert_eq!(r.high_watermark(), 8);
    assert_eq!(
        r.high_watermark_checkpoint_due(10 + CHECKPOINT_MS - 1),
        None,
        "not before the interval"
    );
    assert_eq!(r.high_watermark_checkpoint_due(10 + CHECKPOINT_MS), Some(8));
    // A failed write: due again after the interval, though the high watermark is the same.
    r.high_watermark_checkpoint_failed();
    assert_eq!(
        r.high_watermark_checkpoint_due(10 + CHECKPOINT_MS + 1),
        None
    );
    assert_eq!(
        r.high_watermark_checkpoint_due(10 + 2 * CHECKPOINT_MS),
        Some(8)
    );
    // A clean shutdown records the latest whatever the interval.
    r.appended(9, None, 30);
    r.synced(9, 30);
    r.on_follower_fetch(&fetch(B, 9, 1), 30);
    r.on_follower_fetch(&fetch(C, 9, 1), 30);
    assert_eq!(r.high_watermark_to_checkpoint(), Some(9));
    assert_eq!(r.high_watermark_to_checkpoint(), None);
}

#[test]
fn a_truncation_lowers_what_the_checkpoint_is_known_to_hold() {
    let mut local = log(20, &[(0, 0), (1, 16)]);
    local.high_watermark = 18;
    let mut f = ReplicaState::new(B, 10, config(1), local);
    assert_eq!(f.checkpointed_high_watermark(), Some(18));
    f.apply_partition_change(&change(Some(A), 2, 2, &[A, B, C]), 0);
    let position = f.next_fetch(0).unwrap();
    let header = PartitionHeader {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 0,
            end_offset: 16,
        }),
        ..ok_header(16, &Bytes::new())
    };
    let (outcome, _) = f.on_fetch_response(&asked(&position), &header, &Bytes::new(), 1);
    assert_eq!(outcome, FetchOutcome::Truncated { to: 16 });
    assert_eq!(f.high_watermark(), 16);
    assert_eq!(f.checkpointed_high_watermark(), Some(16));
    assert_eq!(f.high_watermark_checkpoint_due(2), None);
}

fn fetch_in(
    replica: NodeId,
    fetch_offset: i64,
    last_fetched_epoch: i32,
    epoch: i32,
) -> FollowerFetch {
    FollowerFetch {
        current_leader_epoch: epoch,
        ..fetch(replica, fetch_offset, last_fetched_epoch)
    }
}
