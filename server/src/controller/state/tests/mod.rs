use super::*;
use crate::controller::requests::PartitionAssignment;
use crate::metadata::cluster::Listener;
use crate::metadata::controller::{AlterOp, TopicRef};

mod partitions;

/// A controller with a committed image kept beside it: every proposal is committed at
/// once unless `hold` is set.
struct Harness {
    controller: Controller,
    committed: ClusterImage,
    next_index: u64,
    term: u64,
    now_ms: i64,
    /// Proposed, not committed: (index, records).
    uncommitted: Vec<(u64, Vec<MetadataRecord>)>,
    hold: bool,
    replies: Vec<(Token, Reply)>,
}

impl Harness {
    fn new(brokers: &[i32]) -> Harness {
        Harness::with_config(brokers, ControllerConfig::new(NodeId(1)))
    }

    fn with_config(brokers: &[i32], config: ControllerConfig) -> Harness {
        let mut committed = ClusterImage::empty();
        let mut records = vec![
            MetadataRecord::ClusterBootstrap {
                cluster_id: "cluster-a".into(),
            },
            MetadataRecord::ControllerChanged {
                node: NodeId(1),
                term: 1,
            },
        ];
        for b in brokers {
            records.push(MetadataRecord::BrokerRegistered(BrokerRegistration {
                node_id: NodeId(*b),
                incarnation_id: *b as u128,
                broker_epoch: 1,
                listeners: vec![],
                rack: None,
                fenced: false,
            }));
        }
        assert_eq!(committed.apply(1, 1, &records), vec![]);
        let mut controller = Controller::new(config, Rng::new(3));
        controller.become_leader(1);
        assert!(controller.activate(&committed, 0).is_empty());
        Harness {
            controller,
            committed,
            next_index: 2,
            term: 1,
            now_ms: 0,
            uncommitted: Vec::new(),
            hold: false,
            replies: Vec::new(),
        }
    }

    fn propose(&mut self, token: Option<Token>, proposal: Proposal) {
        let index = self.next_index;
        self.next_index += 1;
        self.uncommitted.push((index, proposal.records.clone()));
        assert_eq!(
            self.controller.proposed(index, self.term, token, proposal),
            vec![]
        );
        if !self.hold {
            self.commit_all();
        }
    }

    fn commit_all(&mut self) {
        for (index, records) in std::mem::take(&mut self.uncommitted) {
            assert_eq!(self.committed.apply(index, self.term, &records), vec![]);
            self.committed.check_invariants().unwrap();
            let released = self.controller.committed(index, self.term);
            self.replies.extend(released);
        }
    }

    fn send(&mut self, token: Token, request: ControllerRequest) {
        match self
            .controller
            .handle(self.now_ms, token, request, self.next_index)
        {
            Outcome::Reply(r) => self.replies.push((token, r)),
            Outcome::Held => {}
            Outcome::Propose(p) => self.propose(Some(token), p),
        }
    }

    fn call(&mut self, request: ControllerRequest) -> Reply {
        self.send(99, request);
        let at = self
            .replies
            .iter()
            .position(|(t, _)| *t == 99)
            .expect("a reply");
        self.replies.remove(at).1
    }

    fn tick(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        while let Some(p) = self.controller.next_timer_proposal(now_ms) {
            self.propose(None, p);
        }
    }
}

fn create(name: &str, partitions: i32, rf: i16) -> ControllerRequest {
    ControllerRequest::CreateTopics {
        topics: vec![CreateTopic {
            topic: NewTopic {
                name: name.into(),
                partitions,
                configs: vec![("retention.ms".into(), Some("1000".into()))],
                internal: false,
            },
            replication_factor: rf,
            assignments: vec![],
        }],
        validate_only: false,
    }
}

fn created(reply: Reply) -> Vec<Result<CreatedTopic, MetadataError>> {
    match reply {
        Ok(ControllerReply::CreateTopics(items)) => items,
        other => panic!("not a CreateTopics reply: {other:?}"),
    }
}

#[test]
fn create_topics_places_partitions_evenly_and_answers_after_commit() {
    let mut h = Harness::new(&[1, 2, 3]);
    h.hold = true;
    h.send(7, create("orders", 6, -1));
    assert!(h.replies.is_empty(), "no answer before the commit");
    h.commit_all();
    h.hold = false;
    let (token, reply) = h.replies.pop().unwrap();
    assert_eq!(token, 7);
    let topic = created(reply).pop().unwrap().unwrap();
    assert_eq!(topic.topic.partition_count, 6);
    assert_eq!(topic.replication_factor, 1);
    assert_eq!(
        topic
            .topic
            .overrides
            .get("retention.ms")
            .map(String::as_str),
        Some("1000")
    );
    let mut per_broker = BTreeMap::new();
    for p in h.committed.partitions(topic.topic.id) {
        *per_broker.entry(p.leader.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        per_broker.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    // A second one-partition topic goes to a broker that leads no more than the others.
    let one = created(h.call(create("one", 1, 1))).pop().unwrap().unwrap();
    let two = created(h.call(create("two", 1, 1))).pop().unwrap().unwrap();
    let leader = |t: &CreatedTopic| h.committed.partitions(t.topic.id)[0].leader.unwrap();
    assert_ne!(leader(&one), leader(&two));
}

#[test]
fn create_topics_refuses_what_kafka_refuses() {
    let mut h = Harness::new(&[1, 2]);
    let rf2 = created(h.call(create("r", 1, 2))).pop().unwrap();
    assert!(
        matches!(rf2, Err(MetadataError::InvalidReplicationFactor(m)) if m.contains("not supported yet"))
    );
    let rf0 = created(h.call(create("r", 1, 0))).pop().unwrap();
    assert!(matches!(
        rf0,
        Err(MetadataError::InvalidReplicationFactor(_))
    ));
    let bad_name = created(h.call(create("a/b", 1, 1))).pop().unwrap();
    assert!(matches!(bad_name, Err(MetadataError::InvalidTopic(_))));
    created(h.call(create("a.b", 1, 1))).pop().unwrap().unwrap();
    let exists = created(h.call(create("a.b", 1, 1))).pop().unwrap();
    assert!(matches!(exists, Err(MetadataError::TopicAlreadyExists(_))));
    let collides = created(h.call(create("a_b", 1, 1))).pop().unwrap();
    assert!(matches!(collides, Err(MetadataError::InvalidTopic(_))));
    // Two topics of one request see each other.
    let both = created(h.call(ControllerRequest::CreateTopics {
        topics: vec![
            CreateTopic {
                topic: NewTopic {
                    name: "x".into(),
                    partitions: 1,
                    configs: vec![],
                    internal: false,
                },
                replication_factor: -1,
                assignments: vec![],
            };
            2
        ],
        validate_only: false,
    }));
    assert!(both[0].is_ok());
    assert!(matches!(both[1], Err(MetadataError::TopicAlreadyExists(_))));
}

#[test]
fn validate_only_changes_nothing() {
    let mut h = Harness::new(&[1]);
    let before = h.committed.clone();
    let reply = h.call(ControllerRequest::CreateTopics {
        topics: vec![CreateTopic {
            topic: NewTopic {
                name: "t".into(),
                partitions: 3,
                configs: vec![],
                internal: false,
            },
            replication_factor: -1,
            assignments: vec![],
        }],
        validate_only: true,
    });
    assert!(created(reply)[0].is_ok());
    assert_eq!(h.committed, before);
}

#[test]
fn manual_assignments_are_checked() {
    let mut h = Harness::new(&[1, 2]);
    let assign = |replicas: Vec<Vec<i32>>| ControllerRequest::CreateTopics {
        topics: vec![CreateTopic {
            topic: NewTopic {
                name: "m".into(),
                partitions: -1,
                configs: vec![],
                internal: false,
            },
            replication_factor: -1,
            assignments: replicas
                .into_iter()
                .enumerate()
                .map(|(p, r)| PartitionAssignment {
                    partition: p as i32,
                    replicas: r.into_iter().map(NodeId).collect(),
                })
                .collect(),
        }],
        validate_only: false,
    };
    let unknown = created(h.call(assign(vec![vec![9]]))).pop().unwrap();
    assert!(matches!(
        unknown,
        Err(MetadataError::InvalidReplicaAssignment(_))
    ));
    let ok = created(h.call(assign(vec![vec![2], vec![2]])))
        .pop()
        .unwrap()
        .unwrap();
    assert!(h
        .committed
        .partitions(ok.topic.id)
        .iter()
        .all(|p| p.leader == Some(NodeId(2))));
}

#[test]
fn delete_create_partitions_and_alter_configs() {
    let mut h = Harness::new(&[1, 2]);
    let t = created(h.call(create("t", 2, 1))).pop().unwrap().unwrap();
    let grow = h.call(ControllerRequest::CreatePartitions {
        topics: vec![PartitionsIncrease {
            topic: "t".into(),
            total: 5,
            assignments: vec![],
        }],
        validate_only: false,
    });
    assert_eq!(grow, Ok(ControllerReply::CreatePartitions(vec![Ok(())])));
    assert_eq!(h.committed.topic("t").unwrap().partition_count, 5);
    let shrink = h.call(ControllerRequest::CreatePartitions {
        topics: vec![PartitionsIncrease {
            topic: "t".into(),
            total: 3,
            assignments: vec![],
        }],
        validate_only: false,
    });
    assert!(
        matches!(shrink, Ok(ControllerReply::CreatePartitions(r)) if matches!(r[0], Err(MetadataError::InvalidPartitions(_))))
    );

    let alter = h.call(ControllerRequest::AlterConfigs {
        topics: vec![(
            "t".into(),
            vec![
                AlterOp::Delete("retention.ms".into()),
                AlterOp::Append("cleanup.policy".into(), "compact".into()),
            ],
        )],
        validate_only: false,
    });
    assert_eq!(alter, Ok(ControllerReply::AlterConfigs(vec![Ok(())])));
    let overrides = &h.committed.topic("t").unwrap().overrides;
    assert_eq!(overrides.get("retention.ms"), None);
    assert_eq!(
        overrides.get("cleanup.policy").map(String::as_str),
        Some("delete,compact")
    );

    let deleted = h.call(ControllerRequest::DeleteTopics {
        topics: vec![TopicRef::Id(t.topic.id), TopicRef::Name("t".into())],
    });
    match deleted {
        Ok(ControllerReply::DeleteTopics(r)) => {
            assert_eq!(r[0].as_ref().map(|m| m.id), Ok(t.topic.id));
            assert_eq!(r[1], Err(MetadataError::UnknownTopic));
        }
        other => panic!("{other:?}"),
    }
    assert!(h.committed.topic("t").is_none());
}

#[test]
fn producer_id_blocks_never_overlap_and_need_a_current_broker_epoch() {
    let mut h = Harness::new(&[1, 2]);
    let mut blocks = Vec::new();
    for node in [1, 2, 1] {
        match h.call(ControllerRequest::AllocateProducerIds {
            node: NodeId(node),
            broker_epoch: 1,
        }) {
            Ok(ControllerReply::ProducerIds(b)) => blocks.push(b),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(blocks[0].first, 0);
    assert_eq!(blocks[1].first, blocks[0].first + blocks[0].count as i64);
    assert_eq!(blocks[2].first, blocks[1].first + blocks[1].count as i64);
    assert_eq!(h.committed.next_producer_id(), 3000);
    let stale = h.call(ControllerRequest::AllocateProducerIds {
        node: NodeId(1),
        broker_epoch: 0,
    });
    assert!(matches!(stale, Err(ControllerError::StaleBrokerEpoch(_))));
}

#[test]
fn a_registered_broker_is_fenced_by_silence_and_unfenced_once_caught_up() {
    let mut h = Harness::new(&[1]);
    let register = |incarnation| {
        ControllerRequest::RegisterBroker(RegisterBroker {
            node: NodeId(2),
            incarnation_id: incarnation,
            cluster_id: "cluster-a".into(),
            listeners: vec![Listener {
                name: "PLAINTEXT".into(),
                host: "h2".into(),
                port: 9092,
            }],
            rack: None,
        })
    };
    let epoch = match h.call(register(77)) {
        Ok(ControllerReply::BrokerRegistration { broker_epoch }) => broker_epoch,
        other => panic!("{other:?}"),
    };
    assert_eq!(epoch, 2, "the offset of the registration");
    assert!(h.committed.broker(NodeId(2)).unwrap().fenced);
    let beat = |applied| {
        ControllerRequest::Heartbeat(Heartbeat {
            node: NodeId(2),
            broker_epoch: epoch,
            applied_offset: applied,
            want_fence: false,
            want_shut_down: false,
        })
    };
    // Not caught up: stays fenced.
    let r = h.call(beat(1));
    assert!(matches!(
        r,
        Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
            is_fenced: true,
            is_caught_up: false,
            ..
        }))
    ));
    let r = h.call(beat(2));
    assert!(matches!(
        r,
        Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
            is_fenced: false,
            ..
        }))
    ));
    assert!(!h.committed.broker(NodeId(2)).unwrap().fenced);
    // A topic on broker 2, then silence.
    let t = created(h.call(ControllerRequest::CreateTopics {
        topics: vec![CreateTopic {
            topic: NewTopic {
                name: "on2".into(),
                partitions: -1,
                configs: vec![],
                internal: false,
            },
            replication_factor: -1,
            assignments: vec![PartitionAssignment {
                partition: 0,
                replicas: vec![NodeId(2)],
            }],
        }],
        validate_only: false,
    }))
    .pop()
    .unwrap()
    .unwrap();
    // Another process registering as node 2 while the first is alive is refused.
    h.now_ms = 1_000;
    assert!(matches!(
        h.call(register(78)),
        Err(ControllerError::DuplicateBrokerRegistration(_))
    ));
    h.tick(8_999);
    assert!(!h.committed.broker(NodeId(2)).unwrap().fenced);
    h.tick(9_000);
    assert!(h.committed.broker(NodeId(2)).unwrap().fenced);
    let p = &h.committed.partitions(t.topic.id)[0];
    assert_eq!(p.leader, None);
    assert_eq!(p.leader_epoch, LeaderEpoch(1));
    // It comes back (same process): caught up, unfenced, leads again with a new epoch.
    h.now_ms = 10_000;
    assert!(h.call(beat(100)).is_ok());
    assert!(!h.committed.broker(NodeId(2)).unwrap().fenced);
    let p = &h.committed.partitions(t.topic.id)[0];
    assert_eq!(p.leader, Some(NodeId(2)));
    assert_eq!(p.leader_epoch, LeaderEpoch(2));
    // A restarted process (new incarnation) once the old session ran out: fenced, and
    // leadership leaves it until it has caught up.
    h.now_ms = 30_000;
    let epoch2 = match h.call(register(79)) {
        Ok(ControllerReply::BrokerRegistration { broker_epoch }) => broker_epoch,
        other => panic!("{other:?}"),
    };
    assert!(epoch2 > epoch);
    assert!(h.committed.broker(NodeId(2)).unwrap().fenced);
    assert_eq!(h.committed.partitions(t.topic.id)[0].leader, None);
    assert!(matches!(
        h.call(beat(100)),
        Err(ControllerError::StaleBrokerEpoch(_))
    ));
}

#[test]
fn registration_checks_the_cluster_id_and_heartbeats_need_a_registration() {
    let mut h = Harness::new(&[1]);
    let r = h.call(ControllerRequest::RegisterBroker(RegisterBroker {
        node: NodeId(5),
        incarnation_id: 1,
        cluster_id: "other".into(),
        listeners: vec![],
        rack: None,
    }));
    assert!(matches!(r, Err(ControllerError::InconsistentClusterId(_))));
    let r = h.call(ControllerRequest::Heartbeat(Heartbeat {
        node: NodeId(5),
        broker_epoch: 1,
        applied_offset: 0,
        want_fence: false,
        want_shut_down: false,
    }));
    assert!(matches!(r, Err(ControllerError::BrokerIdNotRegistered(_))));
}

#[test]
fn controlled_shutdown_moves_leadership_before_saying_stop() {
    let mut h = Harness::new(&[1, 2]);
    let t = created(h.call(create("t", 4, 1))).pop().unwrap().unwrap();
    let r = h.call(ControllerRequest::Heartbeat(Heartbeat {
        node: NodeId(2),
        broker_epoch: 1,
        applied_offset: 10,
        want_fence: false,
        want_shut_down: true,
    }));
    assert!(matches!(
        r,
        Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
            should_shut_down: true,
            ..
        }))
    ));
    assert!(h
        .committed
        .partitions(t.topic.id)
        .iter()
        .all(|p| p.leader != Some(NodeId(2))));
    // Its next process registers at once: a fenced broker holds no session.
    let r = h.call(ControllerRequest::RegisterBroker(RegisterBroker {
        node: NodeId(2),
        incarnation_id: 99,
        cluster_id: String::new(),
        listeners: vec![],
        rack: None,
    }));
    assert!(
        matches!(r, Ok(ControllerReply::BrokerRegistration { .. })),
        "{r:?}"
    );
}

#[test]
fn a_new_controller_gives_no_session_to_its_own_nodes_earlier_process() {
    // Node 1 runs the controller and was registered by an earlier process (incarnation
    // 1); this process is incarnation 7.
    let mut committed = ClusterImage::empty();
    let records = vec![
        MetadataRecord::ClusterBootstrap {
            cluster_id: "c".into(),
        },
        MetadataRecord::BrokerRegistered(BrokerRegistration {
            node_id: NodeId(1),
            incarnation_id: 1,
            broker_epoch: 1,
            listeners: vec![],
            rack: None,
            fenced: false,
        }),
        MetadataRecord::ControllerChanged {
            node: NodeId(1),
            term: 2,
        },
    ];
    assert_eq!(committed.apply(1, 2, &records), vec![]);
    let mut config = ControllerConfig::new(NodeId(1));
    config.local_incarnation = Some(7);
    let mut controller = Controller::new(config, Rng::new(3));
    controller.become_leader(2);
    controller.activate(&committed, 0);
    let register = ControllerRequest::RegisterBroker(RegisterBroker {
        node: NodeId(1),
        incarnation_id: 7,
        cluster_id: String::new(),
        listeners: vec![],
        rack: None,
    });
    assert!(
        matches!(controller.handle(0, 1, register, 2), Outcome::Propose(_)),
        "registered at once, not refused as a duplicate"
    );
}

#[test]
fn replies_computed_from_uncommitted_state_wait_for_it() {
    let mut h = Harness::new(&[1]);
    h.hold = true;
    h.send(1, create("t", 1, 1));
    // The second sees the first (pending) creation; its answer waits for that commit.
    h.send(2, create("t", 1, 1));
    assert!(h.replies.is_empty());
    h.commit_all();
    assert_eq!(h.replies.len(), 2);
    let second = h.replies.iter().find(|(t, _)| *t == 2).unwrap().1.clone();
    assert!(matches!(
        created(second)[0],
        Err(MetadataError::TopicAlreadyExists(_))
    ));
}

#[test]
fn losing_leadership_fails_every_pending_request_with_not_controller() {
    let mut h = Harness::new(&[1]);
    h.hold = true;
    h.send(1, create("a", 1, 1));
    h.send(2, create("a", 1, 1));
    let failed = h.controller.resign(Some(NodeId(3)));
    assert_eq!(failed.len(), 2);
    for (_, r) in failed {
        assert_eq!(
            r,
            Err(ControllerError::NotController {
                leader: Some(NodeId(3))
            })
        );
    }
    assert!(!h.controller.is_active());
    // A follower answers at once.
    match h.controller.handle(0, 5, create("b", 1, 1), 9) {
        Outcome::Reply(Err(ControllerError::NotController { .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_controller_holds_requests_until_it_is_active() {
    let mut h = Harness::new(&[1]);
    h.controller.resign(None);
    h.controller.become_leader(2);
    assert!(matches!(
        h.controller.handle(0, 4, create("held", 1, 1), 9),
        Outcome::Held
    ));
    let held = h.controller.activate(&h.committed, 0);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, 4);
}
