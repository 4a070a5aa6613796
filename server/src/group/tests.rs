//! The coordinator driven deterministically: requests, explicit time, observed replies.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;
use wharf_protocol::offsets_topic::OffsetsRecord;

use super::classic::GroupState;
use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn coordinator() -> GroupCoordinator {
    GroupCoordinator::new(
        GroupConfig {
            group_initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        },
        7,
    )
}

fn subscription(topics: &[&str]) -> Bytes {
    let sub = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.to_string()))
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(1);
    sub.encode(&mut buf, 1).expect("subscription encodes");
    buf.freeze()
}

fn protocols(names: &[&str]) -> Vec<Protocol> {
    names
        .iter()
        .map(|n| Protocol {
            name: n.to_string(),
            metadata: subscription(&["t"]),
        })
        .collect()
}

fn join_req(member_id: &str, v4: bool) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: protocols(&["range"]),
        require_known_member_id: v4,
    }
}

fn join_reply(fx: &Effects, token: Token) -> Option<JoinResponse> {
    fx.replies.iter().find_map(|r| match r {
        Reply::Join(t, resp) if *t == token => Some(resp.clone()),
        _ => None,
    })
}

fn sync_reply(fx: &Effects, token: Token) -> Option<SyncResponse> {
    fx.replies.iter().find_map(|r| match r {
        Reply::Sync(t, resp) if *t == token => Some(resp.clone()),
        _ => None,
    })
}

fn sync_req(member_id: &str, generation_id: i32, assignments: Vec<(String, Bytes)>) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        generation_id,
        member_id: member_id.into(),
        group_instance_id: None,
        protocol_type: None,
        protocol_name: None,
        assignments,
    }
}

fn hb(c: &mut GroupCoordinator, now: i64, member_id: &str, generation_id: i32) -> ErrorCode {
    c.heartbeat(
        now,
        HeartbeatRequest {
            group_id: "g".into(),
            generation_id,
            member_id: member_id.into(),
            group_instance_id: None,
        },
    )
    .0
}

fn commit_req(
    member_id: &str,
    generation_id: i32,
    offset: i64,
    metadata: Option<&str>,
) -> CommitRequest {
    CommitRequest {
        group_id: "g".into(),
        generation_id,
        member_id: member_id.into(),
        group_instance_id: None,
        retention_time_ms: -1,
        partitions: vec![CommitPartition {
            topic: "t".into(),
            partition: 0,
            offset,
            leader_epoch: 3,
            metadata: metadata.map(str::to_owned),
            commit_timestamp_ms: -1,
        }],
    }
}

/// Commit through both phases, as the driver does.
fn commit(c: &mut GroupCoordinator, now: i64, req: CommitRequest) -> Vec<ErrorCode> {
    let plan = c.plan_commit(now, &req);
    c.apply_commit(&req.group_id, plan.accepted, now);
    plan.errors
}

fn committed(c: &GroupCoordinator, topic: &str, partition: i32) -> Option<CommittedOffset> {
    let asked = [(topic.to_owned(), vec![partition])];
    c.fetch_offsets("g", Some(&asked)).remove(0).1.remove(0).1
}

/// One member joins (v3, one round trip) and syncs with an assignment: generation 1, Stable.
fn stable_single(c: &mut GroupCoordinator) -> String {
    let fx = c.join_group(0, 1, join_req("", false));
    let r = join_reply(&fx, 1).expect("join answered at once with no initial delay");
    assert_eq!(r.error, None);
    let fx = c.sync_group(
        0,
        2,
        sync_req(
            &r.member_id,
            r.generation_id,
            vec![(r.member_id.clone(), Bytes::from_static(b"A"))],
        ),
    );
    assert_eq!(
        sync_reply(&fx, 2).unwrap().assignment,
        Bytes::from_static(b"A")
    );
    r.member_id
}

#[test]
fn join_v3_with_empty_member_id_joins_in_one_round_trip() {
    let mut c = coordinator();
    let fx = c.join_group(0, 1, join_req("", false));
    let r = join_reply(&fx, 1).unwrap();
    assert_eq!(r.error, None);
    assert!(r.member_id.starts_with("client-"));
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1);
    assert_eq!(c.group("g").unwrap().state, GroupState::CompletingRebalance);
}

#[test]
fn join_v4_requires_a_member_id_first() {
    let mut c = coordinator();
    let fx = c.join_group(0, 1, join_req("", true));
    let r = join_reply(&fx, 1).unwrap();
    assert_eq!(r.error, Some(E::MemberIdRequired));
    assert!(!r.member_id.is_empty());
    assert_eq!(
        c.group("g").unwrap().members.len(),
        0,
        "not a member until it comes back"
    );
    let fx = c.join_group(10, 2, join_req(&r.member_id, true));
    let r2 = join_reply(&fx, 2).unwrap();
    assert_eq!(r2.error, None);
    assert_eq!(r2.member_id, r.member_id);
    assert_eq!(r2.generation_id, 1);
}

#[test]
fn pending_member_that_never_returns_expires_after_its_session_timeout() {
    let mut c = coordinator();
    let fx = c.join_group(0, 1, join_req("", true));
    let id = join_reply(&fx, 1).unwrap().member_id;
    c.tick(SESSION_MS as i64 + 1);
    let fx = c.join_group(SESSION_MS as i64 + 2, 2, join_req(&id, true));
    assert_eq!(join_reply(&fx, 2).unwrap().error, Some(E::UnknownMemberId));
}

#[test]
fn known_member_id_for_unknown_group_is_unknown_member() {
    let mut c = coordinator();
    let fx = c.join_group(0, 1, join_req("ghost", true));
    assert_eq!(join_reply(&fx, 1).unwrap().error, Some(E::UnknownMemberId));
}

#[test]
fn session_timeout_outside_broker_limits_is_rejected() {
    let mut c = coordinator();
    let mut req = join_req("", false);
    req.session_timeout_ms = 100;
    let fx = c.join_group(0, 1, req);
    assert_eq!(
        join_reply(&fx, 1).unwrap().error,
        Some(E::InvalidSessionTimeout)
    );
}

#[test]
fn empty_group_id_is_invalid_for_join() {
    let mut c = coordinator();
    let mut req = join_req("", false);
    req.group_id = String::new();
    let fx = c.join_group(0, 1, req);
    assert_eq!(join_reply(&fx, 1).unwrap().error, Some(E::InvalidGroupId));
}

#[test]
fn second_member_triggers_rebalance_and_both_get_the_next_generation() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    let fx = c.join_group(100, 10, join_req("", false));
    assert!(
        join_reply(&fx, 10).is_none(),
        "parked until the first member rejoins"
    );
    assert_eq!(c.group("g").unwrap().state, GroupState::PreparingRebalance);
    assert_eq!(hb(&mut c, 200, &m1, 1), Some(E::RebalanceInProgress));
    let fx = c.join_group(300, 11, join_req(&m1, false));
    let r1 = join_reply(&fx, 11).unwrap();
    let r2 = join_reply(&fx, 10).unwrap();
    assert_eq!((r1.generation_id, r2.generation_id), (2, 2));
    assert_eq!(r1.leader, m1, "the first member stays leader");
    assert_eq!(r2.leader, m1);
    assert_eq!(
        r1.members.len(),
        2,
        "the leader gets every member's metadata"
    );
    assert!(r2.members.is_empty(), "followers get none");
}

#[test]
fn sync_gives_each_member_exactly_the_leaders_bytes_and_empty_to_the_unmentioned() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    c.join_group(100, 10, join_req("", false));
    let fx = c.join_group(100, 11, join_req(&m1, false));
    let m2 = join_reply(&fx, 10).unwrap().member_id;
    let mut third = join_req("", false);
    third.client_id = "other".into();
    // A follower that syncs first waits for the leader.
    let fx = c.sync_group(200, 20, sync_req(&m2, 2, vec![]));
    assert!(sync_reply(&fx, 20).is_none());
    let payload = Bytes::from_static(&[
        0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
    ]);
    let fx = c.sync_group(
        300,
        21,
        sync_req(&m1, 2, vec![(m1.clone(), payload.clone())]),
    );
    assert_eq!(sync_reply(&fx, 21).unwrap().assignment, payload);
    let follower = sync_reply(&fx, 20).unwrap();
    assert_eq!(follower.error, None);
    assert!(follower.assignment.is_empty());
    assert_eq!(c.group("g").unwrap().state, GroupState::Stable);
    assert!(fx.records.iter().any(|r| matches!(r, OffsetsRecord::GroupMetadata { value: Some(v), .. } if v.generation == 2 && v.members.len() == 2)));
    // Once stable, a late sync gets the stored assignment.
    let fx = c.sync_group(400, 22, sync_req(&m1, 2, vec![]));
    assert_eq!(sync_reply(&fx, 22).unwrap().assignment, payload);
}

#[test]
fn sync_errors_are_kafkas() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    let fx = c.sync_group(0, 1, sync_req("nobody", 1, vec![]));
    assert_eq!(sync_reply(&fx, 1).unwrap().error, Some(E::UnknownMemberId));
    let fx = c.sync_group(0, 2, sync_req(&m1, 7, vec![]));
    assert_eq!(
        sync_reply(&fx, 2).unwrap().error,
        Some(E::IllegalGeneration)
    );
    let mut req = sync_req(&m1, 1, vec![]);
    req.protocol_name = Some("roundrobin".into());
    let fx = c.sync_group(0, 3, req);
    assert_eq!(
        sync_reply(&fx, 3).unwrap().error,
        Some(E::InconsistentGroupProtocol)
    );
    c.join_group(10, 4, join_req("", false));
    let fx = c.sync_group(20, 5, sync_req(&m1, 1, vec![]));
    assert_eq!(
        sync_reply(&fx, 5).unwrap().error,
        Some(E::RebalanceInProgress)
    );
}

#[test]
fn heartbeat_errors_are_kafkas() {
    let mut c = coordinator();
    assert_eq!(
        hb(&mut c, 0, "x", 1),
        Some(E::UnknownMemberId),
        "no such group"
    );
    let m1 = stable_single(&mut c);
    assert_eq!(hb(&mut c, 0, &m1, 1), None);
    assert_eq!(hb(&mut c, 0, "x", 1), Some(E::UnknownMemberId));
    assert_eq!(hb(&mut c, 0, &m1, 0), Some(E::IllegalGeneration));
}

#[test]
fn heartbeats_keep_a_member_and_silence_removes_it_after_the_session_timeout() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    let step = SESSION_MS as i64 / 2;
    for i in 1..10 {
        assert_eq!(hb(&mut c, i * step, &m1, 1), None);
        c.tick(i * step);
    }
    assert_eq!(c.group("g").unwrap().members.len(), 1);
    let later = 9 * step + SESSION_MS as i64;
    c.tick(later);
    let g = c.group("g").unwrap();
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 2);
    assert_eq!(hb(&mut c, later, &m1, 1), Some(E::UnknownMemberId));
}

#[test]
fn dead_member_is_removed_and_the_survivor_gets_a_new_generation() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    c.join_group(0, 10, join_req("", false));
    let fx = c.join_group(0, 11, join_req(&m1, false));
    let m2 = join_reply(&fx, 10).unwrap().member_id;
    c.sync_group(0, 12, sync_req(&m2, 2, vec![]));
    c.sync_group(0, 13, sync_req(&m1, 2, vec![]));
    // m2 keeps heartbeating, m1 goes silent.
    let mut now = 0;
    while now <= SESSION_MS as i64 {
        now += 1000;
        c.tick(now);
        let e = hb(&mut c, now, &m2, 2);
        if e == Some(E::RebalanceInProgress) {
            break;
        }
        assert_eq!(e, None);
    }
    assert_eq!(c.group("g").unwrap().state, GroupState::PreparingRebalance);
    let fx = c.join_group(now, 14, join_req(&m2, false));
    let r = join_reply(&fx, 14).unwrap();
    assert_eq!(r.generation_id, 3);
    assert_eq!(r.leader, m2, "leadership passes to a member that rejoined");
    assert_eq!(r.members.len(), 1);
}

#[test]
fn a_member_whose_join_is_answered_as_a_dead_one_expires_is_kept() {
    // Two members whose sessions end at the same moment: "a" is dead, the leader "b" has
    // rejoined and waits. Removing "a" completes the rebalance, which answers "b" and gives
    // it a new session; "b" must not then be removed as if it were still silent.
    let mut c = coordinator();
    let join_as = |c: &mut GroupCoordinator, token, id: &str, client: &str| {
        let mut req = join_req(id, false);
        req.client_id = client.into();
        c.join_group(0, token, req)
    };
    let fx = join_as(&mut c, 1, "", "b");
    let b = join_reply(&fx, 1).unwrap().member_id;
    join_as(&mut c, 2, "", "a");
    let fx = join_as(&mut c, 3, &b, "b");
    let a = join_reply(&fx, 2).unwrap().member_id;
    assert!(a < b, "the dead member comes first in the group's order");
    assert_eq!(join_reply(&fx, 3).unwrap().leader, b);
    c.sync_group(0, 4, sync_req(&a, 2, vec![]));
    c.sync_group(0, 5, sync_req(&b, 2, vec![]));
    assert_eq!(hb(&mut c, 1000, &a, 2), None);
    assert_eq!(hb(&mut c, 1000, &b, 2), None);
    let fx = join_as(&mut c, 6, &b, "b");
    assert!(
        join_reply(&fx, 6).is_none(),
        "the leader's rejoin starts a rebalance"
    );
    let expiry = 1000 + SESSION_MS as i64;
    let fx = c.tick(expiry);
    let r = join_reply(&fx, 6).expect("a's expiry completes the rebalance");
    assert_eq!((r.error, r.generation_id, r.members.len()), (None, 3, 1));
    let g = c.group("g").unwrap();
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert!(
        g.members.contains_key(&b),
        "b was answered and is in generation 3"
    );
    let fx = c.sync_group(
        expiry,
        7,
        sync_req(&b, 3, vec![(b.clone(), Bytes::from_static(b"B"))]),
    );
    assert_eq!(sync_reply(&fx, 7).unwrap().error, None);
}

#[test]
fn member_that_does_not_rejoin_within_the_rebalance_timeout_is_dropped() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    c.join_group(0, 10, join_req("", false));
    // m1 keeps heartbeating but never rejoins.
    let mut now = 0;
    while now < REBALANCE_MS as i64 {
        now += 2000;
        hb(&mut c, now, &m1, 1);
        c.tick(now);
    }
    let g = c.group("g").unwrap();
    assert_eq!(g.generation_id, 2);
    assert!(!g.members.contains_key(&m1));
    assert_eq!(g.members.len(), 1);
}

#[test]
fn member_that_never_syncs_is_removed_after_the_rebalance_timeout() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    c.join_group(0, 10, join_req("", false));
    let fx = c.join_group(0, 11, join_req(&m1, false));
    let m2 = join_reply(&fx, 10).unwrap().member_id;
    c.sync_group(0, 12, sync_req(&m1, 2, vec![]));
    // m2 heartbeats (allowed while completing) but never syncs.
    let mut now = 0;
    while now <= REBALANCE_MS as i64 {
        now += 2000;
        hb(&mut c, now, &m2, 2);
        hb(&mut c, now, &m1, 2);
        c.tick(now);
    }
    assert!(!c.group("g").unwrap().members.contains_key(&m2));
}

#[test]
fn commits_are_stored_as_sent_and_never_change_membership() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    for i in 0..100 {
        assert_eq!(
            commit(&mut c, i, commit_req(&m1, 1, i, Some("meta"))),
            vec![None]
        );
        assert_eq!(hb(&mut c, i, &m1, 1), None);
    }
    let g = c.group("g").unwrap();
    assert_eq!((g.state, g.generation_id), (GroupState::Stable, 1));
    let got = committed(&c, "t", 0).unwrap();
    assert_eq!(
        (got.offset, got.leader_epoch, got.metadata.as_str()),
        (99, 3, "meta")
    );
    assert_eq!(committed(&c, "t", 1), None);
}

#[test]
fn summaries_list_each_group_with_its_state_members_and_committed_offsets() {
    let mut c = coordinator();
    assert_eq!(c.summaries(), vec![]);
    let m1 = stable_single(&mut c);
    assert_eq!(commit(&mut c, 1, commit_req(&m1, 1, 42, None)), vec![None]);
    let mut simple = commit_req("", -1, 7, None);
    simple.group_id = "a-simple".into();
    assert_eq!(commit(&mut c, 1, simple), vec![None]);
    let summaries = c.summaries();
    let brief: Vec<(&str, &str, usize, Vec<(String, i32, i64)>)> = summaries
        .iter()
        .map(|s| (s.group_id.as_str(), s.state, s.members, s.offsets.clone()))
        .collect();
    assert_eq!(
        brief,
        vec![
            ("a-simple", "Empty", 0, vec![("t".to_string(), 0, 7)]),
            ("g", "Stable", 1, vec![("t".to_string(), 0, 42)]),
        ]
    );
}

#[test]
fn commits_keep_a_member_alive_without_heartbeats() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    for i in 1..6 {
        commit(&mut c, i * 5000, commit_req(&m1, 1, i, None));
        c.tick(i * 5000);
    }
    assert_eq!(c.group("g").unwrap().state, GroupState::Stable);
}

#[test]
fn commit_errors_are_kafkas() {
    let mut c = coordinator();
    assert_eq!(
        commit(&mut c, 0, commit_req("m", 3, 1, None)),
        vec![Some(E::IllegalGeneration)],
        "unknown group, real generation"
    );
    let m1 = stable_single(&mut c);
    assert_eq!(
        commit(&mut c, 0, commit_req(&m1, 0, 1, None)),
        vec![Some(E::IllegalGeneration)]
    );
    assert_eq!(
        commit(&mut c, 0, commit_req("other", 1, 1, None)),
        vec![Some(E::UnknownMemberId)]
    );
    assert_eq!(
        commit(&mut c, 0, commit_req("", -1, 1, None)),
        vec![Some(E::UnknownMemberId)],
        "simple commit to a live group"
    );
    c.join_group(0, 10, join_req("", false));
    assert_eq!(
        commit(&mut c, 0, commit_req(&m1, 1, 5, None)),
        vec![None],
        "allowed while preparing a rebalance"
    );
    c.join_group(0, 11, join_req(&m1, false));
    assert_eq!(
        commit(&mut c, 0, commit_req(&m1, 2, 6, None)),
        vec![Some(E::RebalanceInProgress)]
    );
    assert_eq!(committed(&c, "t", 0).unwrap().offset, 5);
    // A transactional commit is taken while the group completes its rebalance (Kafka's
    // coordinator refuses only plain commits then); a stale generation still is not.
    let txn = c.plan_txn_commit(0, &commit_req(&m1, 2, 7, None));
    assert_eq!(txn.errors, vec![None]);
    let stale = c.plan_txn_commit(0, &commit_req(&m1, 1, 7, None));
    assert_eq!(stale.errors, vec![Some(E::IllegalGeneration)]);
}

#[test]
fn simple_commits_are_accepted_while_the_group_is_empty() {
    let mut c = coordinator();
    assert_eq!(
        commit(&mut c, 0, commit_req("", -1, 42, Some("x"))),
        vec![None]
    );
    let got = committed(&c, "t", 0).unwrap();
    assert_eq!((got.offset, got.metadata.as_str()), (42, "x"));
    assert_eq!(c.group("g").unwrap().state, GroupState::Empty);
    // Null metadata is returned as the empty string.
    commit(&mut c, 1, commit_req("", -1, 43, None));
    assert_eq!(committed(&c, "t", 0).unwrap().metadata, "");
}

#[test]
fn oversized_commit_metadata_is_refused_per_partition() {
    let mut c = coordinator();
    let big = "x".repeat(5000);
    assert_eq!(
        commit(&mut c, 0, commit_req("", -1, 1, Some(&big))),
        vec![Some(E::OffsetMetadataTooLarge)]
    );
    assert_eq!(committed(&c, "t", 0), None);
}

#[test]
fn fetch_all_offsets_lists_every_committed_partition() {
    let mut c = coordinator();
    let mut req = commit_req("", -1, 1, None);
    req.partitions.push(CommitPartition {
        topic: "u".into(),
        partition: 2,
        offset: 9,
        leader_epoch: -1,
        metadata: None,
        commit_timestamp_ms: -1,
    });
    commit(&mut c, 0, req);
    let all = c.fetch_offsets("g", None);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].0, "u");
    assert_eq!(all[1].1[0].1.as_ref().unwrap().offset, 9);
    assert!(c.fetch_offsets("nope", None).is_empty());
}

#[test]
fn batch_leave_empties_the_group_and_reports_each_member() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    let (resp, fx) = c.leave_group(
        0,
        "g",
        vec![
            LeavingMember {
                member_id: m1.clone(),
                group_instance_id: None,
            },
            LeavingMember {
                member_id: "ghost".into(),
                group_instance_id: None,
            },
        ],
    );
    assert_eq!(resp.error, None);
    assert_eq!(resp.members[0].1, None);
    assert_eq!(resp.members[1].1, Some(E::UnknownMemberId));
    let g = c.group("g").unwrap();
    assert_eq!((g.state, g.generation_id), (GroupState::Empty, 2));
    assert!(fx.records.iter().any(
        |r| matches!(r, OffsetsRecord::GroupMetadata { value: Some(v), .. } if v.members.is_empty())
    ));
}

#[test]
fn leaving_during_a_rebalance_answers_the_parked_join() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    c.join_group(0, 10, join_req("", false));
    let (_, fx) = c.leave_group(
        0,
        "g",
        vec![LeavingMember {
            member_id: m1,
            group_instance_id: None,
        }],
    );
    // The remaining new member now has everyone in: the rebalance completes.
    let r = join_reply(&fx, 10).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.generation_id, 2);
}

#[test]
fn describe_shows_protocol_and_assignments_only_when_stable() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    let d = c.describe_group("g");
    assert_eq!(
        (d.state, d.protocol_type.as_str(), d.protocol.as_str()),
        ("Stable", "consumer", "range")
    );
    assert_eq!(d.members[0].member_id, m1);
    assert_eq!(d.members[0].assignment, Bytes::from_static(b"A"));
    assert_eq!(d.members[0].client_host, "/127.0.0.1");
    c.join_group(0, 10, join_req("", false));
    let d = c.describe_group("g");
    assert_eq!(d.state, "PreparingRebalance");
    assert_eq!(d.protocol, "");
    assert!(d.members.iter().all(|m| m.assignment.is_empty()));
    let dead = c.describe_group("missing");
    assert_eq!((dead.error, dead.state), (None, "Dead"));
}

#[test]
fn list_groups_filters_by_state() {
    let mut c = coordinator();
    stable_single(&mut c);
    let mut other = commit_req("", -1, 1, None);
    other.group_id = "offsets-only".into();
    commit(&mut c, 0, other);
    let all = c.list_groups(&[], &[]);
    assert_eq!(
        all.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(),
        vec!["g", "offsets-only"]
    );
    let stable = c.list_groups(&["stable".into()], &[]);
    assert_eq!(stable.len(), 1);
    assert_eq!(stable[0].protocol_type, "consumer");
    assert!(c.list_groups(&[], &["consumer".into()]).is_empty());
}

#[test]
fn delete_groups_only_removes_empty_groups_with_their_offsets() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    commit(&mut c, 0, commit_req(&m1, 1, 5, None));
    let (res, _) = c.delete_groups(&["g".into(), "missing".into()]);
    assert_eq!(res[0].1, Some(E::NonEmptyGroup));
    assert_eq!(res[1].1, Some(E::GroupIdNotFound));
    c.leave_group(
        0,
        "g",
        vec![LeavingMember {
            member_id: m1,
            group_instance_id: None,
        }],
    );
    let (res, fx) = c.delete_groups(&["g".into()]);
    assert_eq!(res[0].1, None);
    assert!(c.group("g").is_none());
    assert!(fx
        .records
        .iter()
        .any(|r| matches!(r, OffsetsRecord::OffsetCommit { value: None, .. })));
    assert!(fx
        .records
        .iter()
        .any(|r| matches!(r, OffsetsRecord::GroupMetadata { value: None, .. })));
    assert_eq!(committed(&c, "t", 0), None);
}

#[test]
fn offset_delete_refuses_topics_the_live_group_consumes() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    let mut req = commit_req(&m1, 1, 5, None);
    req.partitions.push(CommitPartition {
        topic: "old".into(),
        partition: 0,
        offset: 1,
        leader_epoch: -1,
        metadata: None,
        commit_timestamp_ms: -1,
    });
    commit(&mut c, 0, req);
    let (err, per, fx) = c.delete_offsets(0, "g", &[("t".into(), 0), ("old".into(), 0)]);
    assert_eq!(err, None);
    assert_eq!(per, vec![Some(E::GroupSubscribedToTopic), None]);
    assert_eq!(fx.records.len(), 1);
    assert!(committed(&c, "old", 0).is_none());
    assert!(committed(&c, "t", 0).is_some());
    let (err, _, _) = c.delete_offsets(0, "missing", &[("t".into(), 0)]);
    assert_eq!(err, Some(E::GroupIdNotFound));
}

#[test]
fn protocol_with_most_votes_among_common_ones_wins() {
    let mut c = GroupCoordinator::new(
        GroupConfig {
            group_initial_rebalance_delay_ms: 100,
            ..GroupConfig::default()
        },
        1,
    );
    for (i, names) in [
        vec!["range", "roundrobin"],
        vec!["roundrobin", "range"],
        vec!["roundrobin", "sticky"],
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = join_req("", false);
        req.protocols = protocols(&names);
        c.join_group(0, i as u64, req);
    }
    assert!(
        c.tick(100).replies.is_empty(),
        "members kept arriving during the initial delay"
    );
    let fx = c.tick(200);
    let r = join_reply(&fx, 0).unwrap();
    assert_eq!(r.protocol_name.as_deref(), Some("roundrobin"));
    let mut bad = join_req("", false);
    bad.protocols = protocols(&["cooperative-sticky"]);
    let fx = c.join_group(200, 9, bad);
    assert_eq!(
        join_reply(&fx, 9).unwrap().error,
        Some(E::InconsistentGroupProtocol)
    );
}

#[test]
fn initial_rebalance_delay_waits_for_more_members_and_extends_while_they_come() {
    let mut c = GroupCoordinator::new(
        GroupConfig {
            group_initial_rebalance_delay_ms: 3000,
            ..GroupConfig::default()
        },
        1,
    );
    c.join_group(0, 1, join_req("", false));
    assert!(c.tick(2999).replies.is_empty());
    c.join_group(1000, 2, join_req("", false));
    assert!(
        c.tick(3000).replies.is_empty(),
        "a member arrived: the delay is extended"
    );
    c.join_group(3500, 3, join_req("", false));
    assert!(c.tick(5999).replies.is_empty());
    let fx = c.tick(6000);
    assert!(fx.replies.is_empty(), "extended again");
    let fx = c.tick(9000);
    assert_eq!(fx.replies.len(), 3);
    assert!(join_reply(&fx, 1).unwrap().generation_id == 1);
}

#[test]
fn static_member_restart_keeps_generation_and_fences_the_old_incarnation() {
    let mut c = coordinator();
    let mut req = join_req("", true);
    req.group_instance_id = Some("instance-1".into());
    let fx = c.join_group(0, 1, req.clone());
    let r = join_reply(&fx, 1).unwrap();
    assert_eq!(r.error, None, "static members skip MEMBER_ID_REQUIRED");
    let old_id = r.member_id.clone();
    assert!(old_id.starts_with("instance-1-"));
    let mut s = sync_req(&old_id, 1, vec![(old_id.clone(), Bytes::from_static(b"P"))]);
    s.group_instance_id = Some("instance-1".into());
    c.sync_group(0, 2, s);
    // Restart: same instance id, no member id.
    let fx = c.join_group(100, 3, req.clone());
    let r = join_reply(&fx, 3).unwrap();
    assert_eq!(r.error, None);
    assert_ne!(r.member_id, old_id);
    assert_eq!(r.generation_id, 1, "no rebalance");
    assert_eq!(
        r.leader, old_id,
        "the old leader id, so the member does not reassign"
    );
    assert_eq!(c.group("g").unwrap().state, GroupState::Stable);
    let new_id = r.member_id;
    let mut s = sync_req(&new_id, 1, vec![]);
    s.group_instance_id = Some("instance-1".into());
    let fx = c.sync_group(100, 4, s);
    assert_eq!(
        sync_reply(&fx, 4).unwrap().assignment,
        Bytes::from_static(b"P"),
        "keeps its assignment"
    );
    let e = c
        .heartbeat(
            100,
            HeartbeatRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: old_id.clone(),
                group_instance_id: Some("instance-1".into()),
            },
        )
        .0;
    assert_eq!(e, Some(E::FencedInstanceId));
    // Leaving by instance id with an empty member id removes it.
    let (resp, _) = c.leave_group(
        200,
        "g",
        vec![LeavingMember {
            member_id: String::new(),
            group_instance_id: Some("instance-1".into()),
        }],
    );
    assert_eq!(resp.members[0].1, None);
    assert_eq!(c.group("g").unwrap().state, GroupState::Empty);
}

#[test]
fn static_member_not_rejoining_keeps_its_place_through_a_rebalance() {
    let mut c = coordinator();
    let mut s1 = join_req("", false);
    s1.group_instance_id = Some("a".into());
    let fx = c.join_group(0, 1, s1);
    let a = join_reply(&fx, 1).unwrap().member_id;
    c.sync_group(0, 2, sync_req(&a, 1, vec![]));
    c.join_group(0, 3, join_req("", false));
    // Rebalance timeout passes without `a` rejoining (it keeps heartbeating).
    let mut now = 0;
    let mut fx = Effects::default();
    while join_reply(&fx, 3).is_none() {
        now += 1000;
        fx = c.tick(now);
        hb(&mut c, now, &a, 1);
    }
    assert!(
        c.group("g").unwrap().members.contains_key(&a),
        "static members are not dropped for not rejoining"
    );
}

#[test]
fn restart_replays_offsets_and_groups_from_the_records() {
    let mut c = coordinator();
    let mut records = Vec::new();
    let fx = c.join_group(0, 1, join_req("", false));
    let m1 = join_reply(&fx, 1).unwrap().member_id;
    records.extend(fx.records);
    let fx = c.sync_group(
        0,
        2,
        sync_req(&m1, 1, vec![(m1.clone(), Bytes::from_static(b"A"))]),
    );
    records.extend(fx.records);
    for i in 0..3 {
        let plan = c.plan_commit(0, &commit_req(&m1, 1, 10 + i, Some("m")));
        records.extend(plan.records.clone());
        c.apply_commit("g", plan.accepted, 0);
    }
    let mut other = commit_req("", -1, 7, None);
    other.group_id = "gone".into();
    let plan = c.plan_commit(0, &other);
    records.extend(plan.records);
    c.apply_commit("gone", plan.accepted, 0);
    records.extend(c.delete_groups(&["gone".into()]).1.records);

    let mut restarted = coordinator();
    // Through the bytes, as they would be read back from the log.
    let read_back = records.into_iter().map(|r| {
        let (k, v) = r.encode().unwrap();
        OffsetsRecord::decode(&k, v.as_deref()).unwrap()
    });
    restarted.load(read_back, 1000);
    assert_eq!(committed(&restarted, "t", 0).unwrap().offset, 12);
    assert!(restarted.group("gone").is_none());
    let g = restarted.group("g").unwrap();
    assert_eq!((g.state, g.generation_id), (GroupState::Stable, 1));
    assert_eq!(g.members[&m1].assignment, Bytes::from_static(b"A"));
    // The loaded member carries on, and times out if it is gone.
    assert_eq!(hb(&mut restarted, 1500, &m1, 1), None);
    restarted.tick(1500 + SESSION_MS as i64);
    assert_eq!(restarted.group("g").unwrap().state, GroupState::Empty);
}

#[test]
fn a_snapshot_rebuilds_the_same_groups_and_offsets() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    for i in 0..5 {
        commit(&mut c, i, commit_req(&m1, 1, i, Some("m")));
    }
    let mut other = commit_req("", -1, 9, None);
    other.group_id = "simple".into();
    commit(&mut c, 0, other);
    let snapshot = c.snapshot(|_| true);
    assert_eq!(snapshot.len(), 3, "two offsets and one group's metadata");
    let mut rebuilt = coordinator();
    rebuilt.load(snapshot, 10);
    assert_eq!(committed(&rebuilt, "t", 0), committed(&c, "t", 0));
    let g = rebuilt.group("g").unwrap();
    assert_eq!(
        (g.state, g.generation_id, g.members.len()),
        (GroupState::Stable, 1, 1)
    );
    assert_eq!(
        rebuilt.fetch_offsets("simple", None),
        c.fetch_offsets("simple", None)
    );
    assert!(c
        .snapshot(|id| id == "simple")
        .iter()
        .all(|r| r.group() == "simple"));
}

#[test]
fn offsets_of_an_empty_group_expire_after_the_retention_period() {
    let mut c = coordinator();
    commit(&mut c, 0, commit_req("", -1, 1, None));
    let retention = c.config().offsets_retention_ms;
    c.tick(0);
    assert!(c.expire_offsets(retention - 1).records.is_empty());
    let fx = c.expire_offsets(retention);
    assert_eq!(
        fx.records.len(),
        2,
        "the offset's tombstone and the group's"
    );
    assert!(c.group("g").is_none());
}

#[test]
fn next_deadline_names_the_earliest_timer() {
    let mut c = coordinator();
    let m1 = stable_single(&mut c);
    hb(&mut c, 500, &m1, 1);
    assert_eq!(c.next_deadline_ms(), Some(500 + SESSION_MS as i64));
}

// ---------------------------------------------------------------------------------------
// Properties over random histories.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    NewMember { v4: bool },
    StaticMember(usize),
    Rejoin(usize),
    Sync(usize),
    Heartbeat(usize),
    Commit(usize),
    Leave(usize),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<bool>().prop_map(|v4| Op::NewMember { v4 }),
        (0usize..3).prop_map(Op::StaticMember),
        (0usize..6).prop_map(Op::Rejoin),
        (0usize..6).prop_map(Op::Sync),
        (0usize..6).prop_map(Op::Heartbeat),
        (0usize..6).prop_map(Op::Commit),
        (0usize..6).prop_map(Op::Leave),
        (0i64..15_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_histories(ops in proptest::collection::vec(op(), 1..80)) {
        let mut c = GroupCoordinator::new(GroupConfig { group_initial_rebalance_delay_ms: 500, ..GroupConfig::default() }, 3);
        let mut now = 0i64;
        let mut next_token = 0u64;
        let mut answered = std::collections::HashSet::new();
        let mut ever = std::collections::HashSet::new();
        let mut known: Vec<(String, i32)> = Vec::new(); // member id and the generation it last learned
        let mut last_generation = 0;
        let mut committed_max: Option<i64> = None;
        for op in ops {
            let mut fx = Effects::default();
            next_token += 1;
            let token = next_token;
            match op {
                Op::NewMember { v4 } => fx = c.join_group(now, token, join_req("", v4)),
                Op::StaticMember(i) => {
                    let mut req = join_req("", true);
                    req.group_instance_id = Some(format!("instance-{i}"));
                    fx = c.join_group(now, token, req);
                }
                Op::Rejoin(i) => if let Some((id, _)) = known.get(i % known.len().max(1)).cloned() { fx = c.join_group(now, token, join_req(&id, true)) },
                Op::Sync(i) => if let Some((id, generation)) = known.get(i % known.len().max(1)).cloned() {
                    let assignment = vec![(id.clone(), Bytes::from(id.clone().into_bytes()))];
                    fx = c.sync_group(now, token, sync_req(&id, generation, assignment));
                },
                Op::Heartbeat(i) => if let Some((id, generation)) = known.get(i % known.len().max(1)).cloned() { fx = c.heartbeat(now, HeartbeatRequest { group_id: "g".into(), generation_id: generation, member_id: id, group_instance_id: None }).1 },
                Op::Commit(i) => if let Some((id, generation)) = known.get(i % known.len().max(1)).cloned() {
                    let before = c.group("g").map(|g| (g.state, g.generation_id, g.members.len()));
                    let plan = c.plan_commit(now, &commit_req(&id, generation, now, None));
                    let after = c.group("g").map(|g| (g.state, g.generation_id, g.members.len()));
                    prop_assert_eq!(before, after, "a commit never changes membership");
                    if plan.errors[0].is_none() { committed_max = Some(now); }
                    c.apply_commit("g", plan.accepted, now);
                },
                Op::Leave(i) => if let Some((id, _)) = known.get(i % known.len().max(1)).cloned() { fx = c.leave_group(now, "g", vec![LeavingMember { member_id: id, group_instance_id: None }]).1 },
                Op::Advance(ms) => { now += ms; fx = c.tick(now) },
            }
            for r in &fx.replies {
                let (t, member_id, generation, ok) = match r {
                    Reply::Join(t, j) => (*t, j.member_id.clone(), j.generation_id, j.error.is_none() || j.error == Some(E::MemberIdRequired)),
                    Reply::Sync(t, s) => (*t, String::new(), -1, s.error.is_none()),
                };
                prop_assert!(answered.insert(t), "a parked request is answered once");
                if !member_id.is_empty() {
                    ever.insert(member_id.clone());
                }
                if ok && !member_id.is_empty() {
                    known.retain(|(id, _)| *id != member_id);
                    known.push((member_id, generation.max(0)));
                }
                if let Reply::Sync(_, s) = r {
                    if s.error.is_none() && !s.assignment.is_empty() {
                        // Exactly the leader's bytes: they name the member they were made for
                        // (a restarted static member keeps its predecessor's).
                        prop_assert!(ever.contains(std::str::from_utf8(&s.assignment).unwrap()));
                    }
                }
            }
            if let Some(g) = c.group("g") {
                prop_assert!(g.generation_id >= last_generation, "generations never go back");
                last_generation = g.generation_id;
                match g.state {
                    GroupState::Empty => prop_assert!(g.members.is_empty()),
                    // (An initial delay may run with everyone gone again.)
                    _ if g.members.is_empty() => prop_assert_eq!(g.state, GroupState::PreparingRebalance),
                    _ => prop_assert!(g.leader_id.as_ref().is_some_and(|l| g.members.contains_key(l)), "the leader is a member"),
                }
                if g.state == GroupState::Stable || g.state == GroupState::CompletingRebalance {
                    prop_assert!(g.members.values().all(|m| m.join_waiter.is_none()), "no JoinGroup parked outside a rebalance");
                }
                if g.state != GroupState::CompletingRebalance {
                    prop_assert!(g.members.values().all(|m| m.sync_waiter.is_none()), "SyncGroups park only while completing");
                }
                if let Some(at) = committed_max {
                    prop_assert_eq!(committed(&c, "t", 0).map(|o| o.offset), Some(at));
                }
            }
        }
    }
}

#[test]
fn a_member_id_built_from_the_longest_client_id_fits_kafkas_record() {
    let mut c = coordinator();
    let mut req = join_req("", false);
    req.client_id = "c".repeat(crate::limits::MAX_STORED_STRING_BYTES);
    let fx = c.join_group(0, 1, req);
    let r = join_reply(&fx, 1).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.member_id.len(), crate::limits::MAX_STORED_STRING_BYTES);
    assert!(r.member_id.starts_with("ccc"));
    let fx = c.sync_group(
        0,
        2,
        sync_req(
            &r.member_id,
            r.generation_id,
            vec![(r.member_id.clone(), Bytes::new())],
        ),
    );
    assert_eq!(sync_reply(&fx, 2).unwrap().error, None);
    for record in &fx.records {
        record.encode().expect("the group's record fits its schema");
    }
}

#[test]
fn a_group_holds_no_more_member_metadata_than_its_bound() {
    let mut c = coordinator();
    let big = vec![Protocol {
        name: "range".into(),
        metadata: Bytes::from(vec![7u8; crate::limits::MAX_MEMBER_METADATA_BYTES]),
    }];
    let mut joined = 0;
    let refused = loop {
        let mut req = join_req("", false);
        req.protocols = big.clone();
        let fx = c.join_group(0, 100 + joined as u64, req);
        match join_reply(&fx, 100 + joined as u64).map(|r| r.error) {
            Some(Some(error)) => break error,
            // Parked until the rebalance completes, or answered: a member either way.
            _ => joined += 1,
        }
        assert!(joined < 100, "the bound never applied");
    };
    assert_eq!(refused, E::GroupMaxSizeReached);
    let most = crate::limits::MAX_GROUP_METADATA_BYTES / crate::limits::MAX_MEMBER_METADATA_BYTES;
    assert!(
        (most - 1..=most).contains(&joined),
        "{joined} members joined"
    );
    assert!(c.group("g").unwrap().metadata_bytes() <= crate::limits::MAX_GROUP_METADATA_BYTES);
}

#[test]
fn consumer_heartbeats_that_are_refused_create_no_group() {
    use super::consumer::HeartbeatIn;
    let mut c = coordinator();
    let beat = |group: &str, epoch: i32, subscribed: Option<Vec<String>>| HeartbeatIn {
        group_id: group.into(),
        member_id: "m".into(),
        member_epoch: epoch,
        instance_id: None,
        rebalance_timeout_ms: 1000,
        subscribed_topic_names: subscribed,
        owned: None,
    };
    let none = |_: &str| None;
    for (i, (epoch, subscribed)) in [(5, None), (-1, None), (0, None)].into_iter().enumerate() {
        let out = c.consumer_heartbeat(0, beat(&format!("g{i}"), epoch, subscribed), &none);
        assert!(epoch == -1 || out.error.is_some(), "{out:?}");
    }
    assert!(c.list_groups(&[], &[]).is_empty());
    let out = c.consumer_heartbeat(0, beat("real", 0, Some(vec!["t".into()])), &none);
    assert_eq!(out.error, None);
    assert_eq!(c.list_groups(&[], &[]).len(), 1);
}
