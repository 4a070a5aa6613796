use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn bytes_strategy() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn error_strategy() -> impl Strategy<Value = Option<WireError>> {
    proptest::option::of(
        (proptest::sample::select(ErrorKind::ALL.to_vec()), ".{0,20}")
            .prop_map(|(kind, message)| WireError { kind, message }),
    )
}

fn entry_strategy() -> impl Strategy<Value = RaftEntry> {
    (
        0u8..3,
        any::<u64>(),
        any::<u64>(),
        bytes_strategy(),
        bytes_strategy(),
    )
        .prop_map(|(entry_type, term, index, data, context)| RaftEntry {
            entry_type,
            term,
            index,
            data,
            context,
        })
}

fn snapshot_strategy() -> impl Strategy<Value = RaftSnapshot> {
    (
        any::<u64>(),
        any::<u64>(),
        vec(any::<u64>(), 0..5),
        vec(any::<u64>(), 0..3),
        any::<bool>(),
        bytes_strategy(),
    )
        .prop_map(
            |(index, term, voters, learners, auto_leave, data)| RaftSnapshot {
                index,
                term,
                conf_state: ConfState {
                    voters,
                    learners,
                    voters_outgoing: vec![],
                    learners_next: vec![],
                    auto_leave,
                },
                data,
            },
        )
}

fn raft_strategy() -> impl Strategy<Value = RaftMessage> {
    (
        (
            0u8..19,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            any::<u64>(),
            vec(entry_strategy(), 0..4),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            proptest::option::of(snapshot_strategy()),
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            bytes_strategy(),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (msg_type, to, from, term, log_term),
                (index, entries, commit, commit_term),
                (snapshot, request_snapshot, reject, reject_hint, context, priority),
            )| RaftMessage {
                msg_type,
                to,
                from,
                term,
                log_term,
                index,
                entries,
                commit,
                commit_term,
                snapshot,
                request_snapshot,
                reject,
                reject_hint,
                context,
                priority,
            },
        )
}

fn configs_strategy() -> impl Strategy<Value = Vec<ConfigEntry>> {
    vec(
        ("[a-z.]{1,12}", proptest::option::of("[a-z0-9]{0,8}"))
            .prop_map(|(name, value)| ConfigEntry { name, value }),
        0..4,
    )
}

fn assignments_strategy() -> impl Strategy<Value = Vec<PartitionAssignment>> {
    vec(
        (any::<i32>(), vec(any::<i32>(), 0..4)).prop_map(|(partition, replicas)| {
            PartitionAssignment {
                partition,
                replicas,
            }
        }),
        0..3,
    )
}

fn topic_results_strategy() -> impl Strategy<Value = TopicResults> {
    vec(
        (
            error_strategy(),
            proptest::option::of(
                (
                    "[a-z]{1,10}",
                    any::<u128>(),
                    any::<i32>(),
                    any::<i16>(),
                    configs_strategy(),
                    any::<bool>(),
                )
                    .prop_map(
                        |(name, id, partitions, replication_factor, configs, internal)| {
                            TopicDescription {
                                name,
                                id,
                                partitions,
                                replication_factor,
                                configs,
                                internal,
                            }
                        },
                    ),
            ),
        )
            .prop_map(|(error, topic)| TopicResult { error, topic }),
        0..4,
    )
    .prop_map(|results| TopicResults { results })
}

fn item_results_strategy() -> impl Strategy<Value = ItemResults> {
    vec(error_strategy(), 0..4).prop_map(|results| ItemResults { results })
}

fn body_strategy() -> impl Strategy<Value = Body> {
    prop_oneof![
        raft_strategy().prop_map(Body::Raft),
        (any::<i32>(), any::<u64>())
            .prop_map(|(leader_id, term)| Body::NotController(NotController { leader_id, term })),
        (
            any::<i32>(),
            any::<u128>(),
            "[A-Za-z0-9_-]{0,22}",
            vec(
                ("[A-Z]{1,8}", "[a-z0-9.]{1,12}", any::<u16>())
                    .prop_map(|(name, host, port)| Listener { name, host, port }),
                0..3
            ),
            proptest::option::of("[a-z]{0,5}"),
        )
            .prop_map(|(node_id, incarnation_id, cluster_id, listeners, rack)| {
                Body::BrokerRegistrationRequest(BrokerRegistrationRequest {
                    node_id,
                    incarnation_id,
                    cluster_id,
                    listeners,
                    rack,
                })
            }),
        (error_strategy(), any::<i64>()).prop_map(|(error, broker_epoch)| {
            Body::BrokerRegistrationResponse(BrokerRegistrationResponse {
                error,
                broker_epoch,
            })
        }),
        (
            any::<i32>(),
            any::<i64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(node_id, broker_epoch, applied_offset, want_fence, want_shut_down)| {
                    Body::BrokerHeartbeatRequest(BrokerHeartbeatRequest {
                        node_id,
                        broker_epoch,
                        applied_offset,
                        want_fence,
                        want_shut_down,
                    })
                }
            ),
        (
            error_strategy(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(error, is_caught_up, is_fenced, should_shut_down)| {
                Body::BrokerHeartbeatResponse(BrokerHeartbeatResponse {
                    error,
                    is_caught_up,
                    is_fenced,
                    should_shut_down,
                })
            }),
        (any::<i32>(), any::<u64>(), any::<u32>()).prop_map(|(node_id, from_offset, max_bytes)| {
            Body::FetchMetadataRequest(FetchMetadataRequest {
                node_id,
                from_offset,
                max_bytes,
            })
        }),
        (
            error_strategy(),
            any::<u64>(),
            proptest::option::of(snapshot_strategy()),
            vec(entry_strategy(), 0..4)
        )
            .prop_map(|(error, committed_offset, snapshot, entries)| {
                Body::FetchMetadataResponse(FetchMetadataResponse {
                    error,
                    committed_offset,
                    snapshot,
                    entries,
                })
            }),
        (
            vec(
                (
                    "[a-z._-]{0,12}",
                    any::<i32>(),
                    any::<i16>(),
                    assignments_strategy(),
                    configs_strategy(),
                    any::<bool>()
                )
                    .prop_map(
                        |(name, partitions, replication_factor, assignments, configs, internal)| {
                            NewTopic {
                                name,
                                partitions,
                                replication_factor,
                                assignments,
                                configs,
                                internal,
                            }
                        }
                    ),
                0..3
            ),
            any::<bool>()
        )
            .prop_map(|(topics, validate_only)| Body::CreateTopicsRequest(
                CreateTopicsRequest {
                    topics,
                    validate_only
                }
            )),
        topic_results_strategy().prop_map(Body::CreateTopicsResponse),
        vec(
            prop_oneof![
                "[a-z]{0,10}".prop_map(TopicRef::Name),
                any::<u128>().prop_map(TopicRef::Id)
            ],
            0..4
        )
        .prop_map(|topics| Body::DeleteTopicsRequest(DeleteTopicsRequest { topics })),
        topic_results_strategy().prop_map(Body::DeleteTopicsResponse),
        (
            vec(
                ("[a-z]{0,10}", any::<i32>(), assignments_strategy()).prop_map(
                    |(topic, total, assignments)| PartitionsIncrease {
                        topic,
                        total,
                        assignments
                    }
                ),
                0..3
            ),
            any::<bool>()
        )
            .prop_map(|(topics, validate_only)| Body::CreatePartitionsRequest(
                CreatePartitionsRequest {
                    topics,
                    validate_only
                }
            )),
        item_results_strategy().prop_map(Body::CreatePartitionsResponse),
        (
            vec(
                (
                    "[a-z]{0,10}",
                    vec(
                        (
                            proptest::sample::select(vec![
                                AlterOpType::Set,
                                AlterOpType::Delete,
                                AlterOpType::Append,
                                AlterOpType::Subtract
                            ]),
                            "[a-z.]{0,10}",
                            proptest::option::of("[a-z0-9,]{0,8}")
                        )
                            .prop_map(|(op, name, value)| AlterOp {
                                op,
                                name,
                                value
                            }),
                        0..3
                    )
                )
                    .prop_map(|(topic, ops)| TopicAlterations { topic, ops }),
                0..3
            ),
            any::<bool>()
        )
            .prop_map(|(topics, validate_only)| Body::AlterConfigsRequest(
                AlterConfigsRequest {
                    topics,
                    validate_only
                }
            )),
        item_results_strategy().prop_map(Body::AlterConfigsResponse),
        (any::<i32>(), any::<i64>()).prop_map(|(node_id, broker_epoch)| {
            Body::AllocateProducerIdsRequest(AllocateProducerIdsRequest {
                node_id,
                broker_epoch,
            })
        }),
        (proptest::sample::select(ErrorKind::ALL.to_vec()), ".{0,20}")
            .prop_map(|(kind, message)| Body::ErrorResponse(WireError { kind, message })),
        (error_strategy(), any::<i64>(), any::<i32>()).prop_map(
            |(error, first_producer_id, count)| {
                Body::AllocateProducerIdsResponse(AllocateProducerIdsResponse {
                    error,
                    first_producer_id,
                    count,
                })
            }
        ),
        (
            any::<i16>(),
            any::<i32>(),
            any::<i64>(),
            vec(
                (
                    topic_ref_strategy(),
                    vec(alter_partition_data_strategy(), 0..3)
                )
                    .prop_map(|(topic, partitions)| AlterPartitionTopic { topic, partitions }),
                0..3
            )
        )
            .prop_map(|(version, broker_id, broker_epoch, topics)| {
                Body::AlterPartitionRequest(AlterPartitionRequest {
                    version,
                    broker_id,
                    broker_epoch,
                    topics,
                })
            }),
        vec(
            (
                topic_ref_strategy(),
                vec(alter_partition_result_strategy(), 0..3)
            )
                .prop_map(|(topic, partitions)| AlterPartitionTopicResult { topic, partitions }),
            0..3
        )
        .prop_map(|topics| Body::AlterPartitionResponse(AlterPartitionResponse { topics })),
        any::<i32>()
            .prop_map(|node_id| Body::DescribeQuorumRequest(DescribeQuorumRequest { node_id })),
        (
            any::<u64>(),
            any::<i32>(),
            any::<u64>(),
            vec(replica_progress_strategy(), 0..4),
            vec(replica_progress_strategy(), 0..4)
        )
            .prop_map(|(term, leader_id, committed_offset, voters, observers)| {
                Body::DescribeQuorumResponse(DescribeQuorumResponse {
                    term,
                    leader_id,
                    committed_offset,
                    voters,
                    observers,
                })
            }),
    ]
}

fn replica_progress_strategy() -> impl Strategy<Value = ReplicaProgress> {
    (any::<i32>(), any::<u64>(), any::<i64>()).prop_map(
        |(node_id, log_end_offset, last_heard_ms)| ReplicaProgress {
            node_id,
            log_end_offset,
            last_heard_ms,
        },
    )
}

fn topic_ref_strategy() -> impl Strategy<Value = TopicRef> {
    prop_oneof![
        "[a-z0-9._-]{0,20}".prop_map(TopicRef::Name),
        any::<u128>().prop_map(TopicRef::Id),
    ]
}

fn alter_partition_data_strategy() -> impl Strategy<Value = AlterPartitionData> {
    (
        any::<i32>(),
        any::<i32>(),
        vec(
            (any::<i32>(), any::<i64>()).prop_map(|(broker_id, broker_epoch)| IsrMember {
                broker_id,
                broker_epoch,
            }),
            0..4,
        ),
        any::<i8>(),
        any::<i32>(),
    )
        .prop_map(
            |(partition, leader_epoch, new_isr, leader_recovery_state, partition_epoch)| {
                AlterPartitionData {
                    partition,
                    leader_epoch,
                    new_isr,
                    leader_recovery_state,
                    partition_epoch,
                }
            },
        )
}

fn alter_partition_result_strategy() -> impl Strategy<Value = AlterPartitionResult> {
    (
        any::<i32>(),
        any::<i16>(),
        any::<i32>(),
        any::<i32>(),
        vec(any::<i32>(), 0..4),
        any::<i8>(),
        any::<i32>(),
    )
        .prop_map(
            |(
                partition,
                error_code,
                leader_id,
                leader_epoch,
                isr,
                leader_recovery_state,
                partition_epoch,
            )| AlterPartitionResult {
                partition,
                error_code,
                leader_id,
                leader_epoch,
                isr,
                leader_recovery_state,
                partition_epoch,
            },
        )
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    (any::<u64>(), body_strategy(), any::<u64>()).prop_map(
        |(correlation_id, body, metadata_offset)| Frame {
            correlation_id,
            metadata_offset,
            body,
        },
    )
}

/// Splits `wire` into frames with `split_frame`, feeding it `chunk` bytes at a time.
fn split_all(wire: &[u8], chunk: usize) -> Result<Vec<Bytes>, FrameError> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(frame) = split_frame(&mut buf, MAX_FRAME_BYTES)? {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "bytes left over after the last frame");
    Ok(frames)
}

proptest! {
    #[test]
    fn frames_round_trip(frames in vec(frame_strategy(), 1..4), chunk in 1usize..64) {
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&encode_frame(f).unwrap());
        }
        let split = split_all(&wire, chunk).unwrap();
        prop_assert_eq!(split.len(), frames.len());
        for (bytes, frame) in split.iter().zip(&frames) {
            prop_assert_eq!(&decode_frame(bytes).unwrap(), frame);
        }
    }

    #[test]
    fn a_nodes_frame_is_never_taken_for_a_kafka_request(frame in frame_strategy()) {
        let wire = encode_frame(&frame).unwrap();
        prop_assert_eq!(speaker(&wire), Some(Speaker::Node));
        // What the rule rests on: the root table sits right behind its offset.
        let root = u32::from_le_bytes(wire[4..8].try_into().unwrap());
        prop_assert!((4..256).contains(&root), "root offset {}", root);
    }

    #[test]
    fn garbage_is_refused_or_decoded_without_panicking(garbage in vec(any::<u8>(), 0..300)) {
        let bytes = Bytes::from(garbage);
        let _ = decode_frame(&bytes);
        let _ = verify_record_batch(&bytes);
    }

    #[test]
    fn damaged_frames_are_refused_or_decoded_without_panicking(
        frame in frame_strategy(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let wire = encode_frame(&frame).unwrap();
        let mut damaged = wire[LENGTH_PREFIX_BYTES..].to_vec();
        for (at, byte) in flips {
            let i = at.index(damaged.len());
            damaged[i] ^= byte | 1;
        }
        let _ = decode_frame(&Bytes::from(damaged));
    }

    #[test]
    fn truncated_frames_are_refused_or_decoded_without_panicking(
        frame in frame_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let wire = encode_frame(&frame).unwrap();
        let body = &wire[LENGTH_PREFIX_BYTES..];
        let cut = cut.index(body.len());
        // Cutting off only trailing alignment padding can leave a valid buffer; anything
        // else is refused by the verifier.
        let decoded = decode_frame(&Bytes::copy_from_slice(&body[..cut]));
        if cut < 8 {
            prop_assert!(decoded.is_err());
        }
    }
}

#[test]
fn oversized_lengths_are_refused_before_reading_the_frame() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes());
    assert_eq!(
        split_frame(&mut buf, MAX_FRAME_BYTES),
        Err(FrameError::TooLarge {
            size: MAX_FRAME_BYTES + 1,
            max_bytes: MAX_FRAME_BYTES
        })
    );
    let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    assert!(matches!(
        split_frame(&mut buf, MAX_FRAME_BYTES),
        Err(FrameError::TooLarge { .. })
    ));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(
        split_frame(&mut buf, MAX_FRAME_BYTES),
        Err(FrameError::Empty)
    );
    // A partial prefix or frame waits for more bytes.
    let mut buf = BytesMut::from(&[0u8, 0][..]);
    assert_eq!(split_frame(&mut buf, MAX_FRAME_BYTES), Ok(None));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 9, 1, 2][..]);
    assert_eq!(split_frame(&mut buf, MAX_FRAME_BYTES), Ok(None));
}

#[test]
fn a_frame_too_large_to_send_is_an_error_not_a_frame() {
    let frame = Frame {
        correlation_id: 1,
        metadata_offset: 0,
        body: Body::Raft(RaftMessage {
            entries: vec![RaftEntry {
                data: Bytes::from(vec![7u8; MAX_FRAME_BYTES]),
                ..RaftEntry::default()
            }],
            ..RaftMessage::default()
        }),
    };
    assert!(matches!(
        encode_frame(&frame),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn deep_or_table_heavy_buffers_are_refused_by_the_verifier() {
    // A vector of many empty tables: within the frame size but over the table budget when
    // the budget is small; the verifier options are what bound the walk.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let entries: Vec<_> = (0..1000)
        .map(|_| fb::RaftEntry::create(&mut fbb, &fb::RaftEntryArgs::default()))
        .collect();
    let entries = fbb.create_vector(&entries);
    let msg = fb::RaftMessage::create(
        &mut fbb,
        &fb::RaftMessageArgs {
            entries: Some(entries),
            ..Default::default()
        },
    );
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            metadata_offset: 0,
            correlation_id: 0,
            body_type: fb::Body::RaftMessage,
            body: Some(msg.as_union_value()),
        },
    );
    fbb.finish(root, None);
    let data = fbb.finished_data();
    let tight = flatbuffers::VerifierOptions {
        max_tables: 100,
        ..verifier_options()
    };
    assert!(flatbuffers::root_with_opts::<fb::Frame>(&tight, data).is_err());
    assert!(verify_frame(data).is_ok());
}

#[test]
fn unknown_body_types_are_refused() {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let not = fb::NotController::create(&mut fbb, &fb::NotControllerArgs::default());
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            metadata_offset: 0,
            correlation_id: 0,
            body_type: fb::Body(200),
            body: Some(not.as_union_value()),
        },
    );
    fbb.finish(root, None);
    let bytes = Bytes::copy_from_slice(fbb.finished_data());
    assert_eq!(decode_frame(&bytes), Err(FrameError::UnknownBody(200)));
}

#[test]
fn error_kinds_match_the_schema_numbers() {
    assert_eq!(
        ErrorKind::TopicAlreadyExists.code(),
        fb::ErrorKind::TopicAlreadyExists.0
    );
    assert_eq!(
        ErrorKind::PolicyViolation.code(),
        fb::ErrorKind::PolicyViolation.0
    );
    assert_eq!(
        ErrorKind::NotController.code(),
        fb::ErrorKind::NotController.0
    );
    assert_eq!(ErrorKind::ALL.len(), fb::ErrorKind::ENUM_MAX as usize);
    for kind in ErrorKind::ALL {
        assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
    }
    assert_eq!(ErrorKind::from_code(0), None);
}

#[test]
fn decoded_byte_fields_are_slices_of_the_frame() {
    let frame = Frame {
        correlation_id: 9,
        metadata_offset: 0,
        body: Body::Raft(RaftMessage {
            entries: vec![RaftEntry {
                data: Bytes::from_static(b"records"),
                ..RaftEntry::default()
            }],
            ..RaftMessage::default()
        }),
    };
    let wire = encode_frame(&frame).unwrap();
    let body = wire.slice(LENGTH_PREFIX_BYTES..);
    let Body::Raft(m) = decode_frame(&body).unwrap().body else {
        panic!("a raft message");
    };
    let data = &m.entries[0].data;
    let start = data.as_ptr() as usize - body.as_ptr() as usize;
    assert!(start + data.len() <= body.len());
    assert_eq!(&data[..], b"records");
}

#[test]
fn a_kafka_request_is_told_from_its_api_key() {
    // size, api key, api version: ApiVersions v4, DescribeCluster v1, DescribeQuorum v2,
    // and the highest key Kafka could add without changing the rule.
    for (key, version) in [(18i16, 4i16), (60, 1), (55, 2), (255, 0)] {
        let mut wire = 21u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&key.to_be_bytes());
        wire.extend_from_slice(&version.to_be_bytes());
        assert_eq!(speaker(&wire), Some(Speaker::KafkaClient), "key {key}");
    }
    assert_eq!(speaker(&[0, 0, 0, 9]), None, "too few bytes to tell");
    // A big frame (a snapshot's worth of Raft entries) still starts with a small offset.
    let entry = RaftEntry {
        entry_type: 0,
        term: 1,
        index: 1,
        data: Bytes::from(vec![7u8; 1 << 20]),
        context: Bytes::new(),
    };
    let frame = Frame::new(
        1,
        Body::Raft(RaftMessage {
            entries: vec![entry.clone(), entry],
            ..RaftMessage::default()
        }),
    );
    assert_eq!(speaker(&encode_frame(&frame).unwrap()), Some(Speaker::Node));
}
