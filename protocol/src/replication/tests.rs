use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn partition_strategy() -> impl Strategy<Value = FetchPartition> {
    (
        1u128..,
        0i32..100,
        -1i32..50,
        0i64..1 << 40,
        -1i32..50,
        -1i64..1 << 40,
        1i32..1 << 24,
        -1i64..1 << 40,
    )
        .prop_map(
            |(
                topic_id,
                partition,
                current_leader_epoch,
                fetch_offset,
                last_fetched_epoch,
                log_start_offset,
                max_bytes,
                synced,
            )| {
                FetchPartition {
                    topic_id,
                    partition,
                    current_leader_epoch,
                    fetch_offset,
                    last_fetched_epoch,
                    log_start_offset,
                    max_bytes,
                    synced_offset: synced.min(fetch_offset),
                }
            },
        )
}

fn request_strategy() -> impl Strategy<Value = FetchRequest> {
    (
        any::<i32>(),
        0i32..1000,
        -1i64..1 << 40,
        0i32..10_000,
        0i32..1 << 20,
        1i32..i32::MAX,
        vec(partition_strategy(), 0..6),
    )
        .prop_map(
            |(
                correlation_id,
                replica_id,
                broker_epoch,
                max_wait_ms,
                min_bytes,
                max_bytes,
                mut partitions,
            )| {
                // Distinct partitions, as the decoder insists.
                for (i, p) in partitions.iter_mut().enumerate() {
                    p.partition = i as i32;
                }
                FetchRequest {
                    correlation_id,
                    replica_id,
                    broker_epoch,
                    max_wait_ms,
                    min_bytes,
                    max_bytes,
                    partitions,
                }
            },
        )
}

fn partition_data_strategy() -> impl Strategy<Value = PartitionData> {
    (
        1u128..,
        0i32..100,
        prop_oneof![Just(0i16), any::<i16>()],
        -1i64..1 << 40,
        -1i64..1 << 40,
        -1i64..1 << 40,
        proptest::option::of((-1i32..50, -1i64..1 << 40)),
        -1i32..50,
        -1i32..10,
        vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(
                topic_id,
                partition,
                error_code,
                hw,
                lso,
                start,
                diverging,
                leader_epoch,
                leader_id,
                records,
            )| {
                let records = if error_code == 0 && diverging.is_none() {
                    Bytes::from(records)
                } else {
                    Bytes::new()
                };
                PartitionData {
                    header: PartitionHeader {
                        topic_id,
                        partition,
                        error_code,
                        high_watermark: hw,
                        last_stable_offset: lso,
                        log_start_offset: start,
                        diverging_epoch: diverging
                            .map(|(epoch, end_offset)| EpochEndOffset { epoch, end_offset }),
                        leader_epoch,
                        leader_id,
                        records_bytes: records.len() as u32,
                    },
                    records,
                }
            },
        )
}

fn response_strategy() -> impl Strategy<Value = FetchResponse> {
    (any::<i32>(), vec(partition_data_strategy(), 0..6)).prop_map(|(correlation_id, partitions)| {
        FetchResponse {
            correlation_id,
            error_code: 0,
            partitions,
        }
    })
}

fn concat(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|b| b.iter().copied()).collect()
}

/// Splits `wire` into frames, feeding it `chunk` bytes at a time as a socket would.
fn split_all(wire: &[u8], chunk: usize, max: usize) -> Result<Vec<Bytes>, FrameError> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(frame) = split_frame(&mut buf, max)? {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "bytes left over after the last frame");
    Ok(frames)
}

/// A frame (after the length field) around `header` and `payload`, with a correct CRC:
/// for building hostile headers that only the verifier or the value checks can refuse.
fn frame_around(header: &[u8], payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32(header.len() as u32);
    out.put_u32(crc32c::crc32c(header));
    out.put_slice(header);
    out.put_slice(payload);
    out.freeze()
}

fn one_partition_request() -> FetchRequest {
    FetchRequest {
        correlation_id: 0,
        replica_id: 2,
        broker_epoch: 17,
        max_wait_ms: 500,
        min_bytes: 1,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartition {
            topic_id: 0xabc,
            partition: 3,
            current_leader_epoch: 4,
            fetch_offset: 100,
            last_fetched_epoch: 4,
            log_start_offset: 0,
            max_bytes: 1 << 20,
            synced_offset: 90,
        }],
    }
}

fn answer(request: &FetchRequest, records: &[u8]) -> FetchResponse {
    FetchResponse {
        correlation_id: request.correlation_id,
        error_code: 0,
        partitions: request
            .partitions
            .iter()
            .map(|p| PartitionData {
                header: PartitionHeader {
                    high_watermark: 90,
                    last_stable_offset: 90,
                    log_start_offset: 0,
                    leader_epoch: 4,
                    leader_id: 1,
                    records_bytes: records.len() as u32,
                    ..PartitionHeader::error(p.topic_id, p.partition, 0)
                },
                records: Bytes::copy_from_slice(records),
            })
            .collect(),
    }
}

fn response_frame(response: &FetchResponse) -> Bytes {
    let wire = concat(&encode_response(response).unwrap());
    Bytes::copy_from_slice(&wire[LENGTH_BYTES..])
}

proptest! {
    #[test]
    fn requests_and_responses_round_trip_through_a_split_stream(
        requests in vec(request_strategy(), 0..3),
        responses in vec(response_strategy(), 0..3),
        chunk in 1usize..97,
    ) {
        let mut wire = Vec::new();
        for r in &requests {
            wire.extend_from_slice(&encode_request(r).unwrap());
        }
        for r in &responses {
            wire.extend_from_slice(&concat(&encode_response(r).unwrap()));
        }
        let frames = split_all(&wire, chunk, MAX_FRAME_BYTES).unwrap();
        prop_assert_eq!(frames.len(), requests.len() + responses.len());
        for (frame, r) in frames.iter().zip(&requests) {
            prop_assert_eq!(decode_frame(frame).unwrap(), Message::FetchRequest(r.clone()));
        }
        for (frame, r) in frames[requests.len()..].iter().zip(&responses) {
            prop_assert_eq!(decode_frame(frame).unwrap(), Message::FetchResponse(r.clone()));
        }
    }

    #[test]
    fn garbage_is_refused_or_decoded_without_panicking(garbage in vec(any::<u8>(), 0..400)) {
        let bytes = Bytes::from(garbage.clone());
        let _ = decode_frame(&bytes);
        let mut buf = BytesMut::from(&garbage[..]);
        while let Ok(Some(frame)) = split_frame(&mut buf, 1 << 16) {
            let _ = decode_frame(&frame);
        }
    }

    #[test]
    fn garbage_headers_with_a_good_checksum_are_refused_or_decoded_without_panicking(
        header in vec(any::<u8>(), 0..300),
        payload in vec(any::<u8>(), 0..40),
    ) {
        let _ = decode_frame(&frame_around(&header, &payload));
    }

    #[test]
    fn any_damage_to_a_header_is_caught_by_its_checksum(
        response in response_strategy(),
        flips in vec((any::<prop::sample::Index>(), 1u8..), 1..6),
    ) {
        let frame = response_frame(&response);
        let header_length = u32::from_be_bytes(frame[0..4].try_into().unwrap()) as usize;
        let mut damaged = frame.to_vec();
        let header = &mut damaged[8..8 + header_length];
        let mut changed = header.to_vec();
        for (at, mask) in flips {
            let i = at.index(changed.len());
            changed[i] ^= mask;
        }
        let differs = changed != header;
        header.copy_from_slice(&changed);
        let decoded = decode_frame(&Bytes::from(damaged));
        if differs {
            prop_assert!(matches!(decoded, Err(FrameError::BadChecksum { .. })), "{:?}", decoded);
        }
    }

    #[test]
    fn damaged_frames_are_refused_or_decoded_without_panicking(
        request in request_strategy(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let wire = encode_request(&request).unwrap();
        let mut damaged = wire[LENGTH_BYTES..].to_vec();
        for (at, byte) in flips {
            let i = at.index(damaged.len());
            damaged[i] ^= byte | 1;
        }
        let _ = decode_frame(&Bytes::from(damaged));
    }

    #[test]
    fn truncated_frames_are_refused(response in response_strategy(), cut in any::<prop::sample::Index>()) {
        let frame = response_frame(&response);
        let cut = cut.index(frame.len());
        prop_assert!(decode_frame(&frame.slice(..cut)).is_err());
    }
}

#[test]
fn oversized_lengths_are_refused_before_the_frame_is_read() {
    let mut buf = BytesMut::new();
    buf.put_u32(1 << 20);
    assert_eq!(
        split_frame(&mut buf, 1 << 16),
        Err(FrameError::TooLarge {
            size: 1 << 20,
            max_bytes: 1 << 16
        })
    );
    // The absolute cap holds whatever the caller allows.
    let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    assert_eq!(
        split_frame(&mut buf, usize::MAX),
        Err(FrameError::TooLarge {
            size: u32::MAX as usize,
            max_bytes: MAX_FRAME_BYTES
        })
    );
    // Too short to hold its prefix.
    let mut buf = BytesMut::from(&[0u8, 0, 0, 7][..]);
    assert_eq!(split_frame(&mut buf, 1 << 16), Err(FrameError::TooShort(7)));
    // A header length past the cap, or past the frame, is refused as soon as it is seen.
    let mut buf = BytesMut::new();
    buf.put_u32(100);
    buf.put_u32((MAX_HEADER_BYTES + 1) as u32);
    assert!(matches!(
        split_frame(&mut buf, 1 << 16),
        Err(FrameError::TooLarge { .. })
    ));
    let mut buf = BytesMut::new();
    buf.put_u32(100);
    buf.put_u32(93);
    assert!(matches!(
        split_frame(&mut buf, 1 << 16),
        Err(FrameError::Malformed(_))
    ));
    // Partial prefixes and frames wait for more bytes.
    let mut buf = BytesMut::from(&[0u8, 0][..]);
    assert_eq!(split_frame(&mut buf, 1 << 16), Ok(None));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 30, 0, 0, 0, 4, 1][..]);
    assert_eq!(split_frame(&mut buf, 1 << 16), Ok(None));
}

#[test]
fn a_follower_caps_frames_at_what_it_asked_for() {
    let cap = max_frame_bytes_for(1 << 20, 1 << 20);
    assert_eq!(cap, 8 + MAX_HEADER_BYTES + (2 << 20));
    assert_eq!(max_frame_bytes_for(i32::MAX, usize::MAX), MAX_FRAME_BYTES);
    assert_eq!(max_frame_bytes_for(-5, 0), 8 + MAX_HEADER_BYTES);
}

#[test]
fn records_are_slices_of_the_frame_and_split_by_partition() {
    let mut request = one_partition_request();
    request.partitions.push(FetchPartition {
        partition: 4,
        ..request.partitions[0]
    });
    let mut response = answer(&request, b"first");
    response.partitions[1].records = Bytes::from_static(b"second!");
    let frame = response_frame(&response);
    let Message::FetchResponse(decoded) = decode_frame(&frame).unwrap() else {
        panic!("not a response");
    };
    assert_eq!(&decoded.partitions[0].records[..], b"first");
    assert_eq!(&decoded.partitions[1].records[..], b"second!");
    assert_eq!(decoded.partitions[1].header.records_bytes, 7);
    let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    assert!(frame_range.contains(&(decoded.partitions[1].records.as_ptr() as usize)));
}

#[test]
fn the_response_head_is_written_without_the_records() {
    let request = one_partition_request();
    let response = answer(&request, &[9u8; 1000]);
    let parts = encode_response(&response).unwrap();
    assert_eq!(parts.len(), 2);
    // The records go out as the very Bytes they were given.
    assert_eq!(parts[1].as_ptr(), response.partitions[0].records.as_ptr());
    let frame_length = u32::from_be_bytes(parts[0][..4].try_into().unwrap()) as usize;
    assert_eq!(frame_length + LENGTH_BYTES, parts[0].len() + 1000);
}

#[test]
fn records_lengths_must_add_up_to_the_payload() {
    let request = one_partition_request();
    let frame = response_frame(&answer(&request, b"0123456789"));
    // One byte more or less than announced.
    let mut longer = frame.to_vec();
    longer.push(0);
    assert!(matches!(
        decode_frame(&Bytes::from(longer)),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        decode_frame(&frame.slice(..frame.len() - 1)),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn a_request_followed_by_bytes_is_refused() {
    let wire = encode_request(&one_partition_request()).unwrap();
    let mut frame = wire[LENGTH_BYTES..].to_vec();
    frame.extend_from_slice(b"extra");
    assert!(matches!(
        decode_frame(&Bytes::from(frame)),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn records_with_an_error_or_a_diverging_epoch_are_refused_both_ways() {
    let request = one_partition_request();
    let mut response = answer(&request, b"records");
    response.partitions[0].header.error_code = 6;
    assert!(matches!(
        encode_response(&response),
        Err(FrameError::BadValue(_))
    ));
    let mut response = answer(&request, b"records");
    response.partitions[0].header.diverging_epoch = Some(EpochEndOffset {
        epoch: 3,
        end_offset: 80,
    });
    assert!(matches!(
        encode_response(&response),
        Err(FrameError::BadValue(_))
    ));

    // Hand-built: a header announcing records under an error.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let p = fb::PartitionResponse::create(
        &mut fbb,
        &fb::PartitionResponseArgs {
            topic_id: Some(&uuid_to_fb(7)),
            partition: 0,
            error_code: 74,
            records_bytes: 3,
            ..Default::default()
        },
    );
    let partitions = fbb.create_vector(&[p]);
    let body = fb::FetchResponse::create(
        &mut fbb,
        &fb::FetchResponseArgs {
            error_code: 0,
            partitions: Some(partitions),
        },
    );
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id: 0,
            body_type: fb::Body::FetchResponse,
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(root, None);
    let frame = frame_around(fbb.finished_data(), b"abc");
    assert!(matches!(decode_frame(&frame), Err(FrameError::BadValue(_))));
}

fn request_header(partitions: &[fb::FetchPartitionArgs], replica_id: i32, max_bytes: i32) -> Bytes {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let list: Vec<_> = partitions
        .iter()
        .map(|args| fb::FetchPartition::create(&mut fbb, args))
        .collect();
    let list = fbb.create_vector(&list);
    let body = fb::FetchRequest::create(
        &mut fbb,
        &fb::FetchRequestArgs {
            replica_id,
            broker_epoch: 1,
            max_wait_ms: 10,
            min_bytes: 1,
            max_bytes,
            partitions: Some(list),
        },
    );
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id: 0,
            body_type: fb::Body::FetchRequest,
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(root, None);
    frame_around(fbb.finished_data(), &[])
}

#[test]
fn impossible_values_in_a_request_are_refused() {
    let id = uuid_to_fb(5);
    let nil = uuid_to_fb(0);
    let good = fb::FetchPartitionArgs {
        topic_id: Some(&id),
        partition: 0,
        current_leader_epoch: 1,
        fetch_offset: 0,
        last_fetched_epoch: -1,
        log_start_offset: 0,
        max_bytes: 100,
        synced_offset: -1,
    };
    assert!(decode_frame(&request_header(
        &[fb::FetchPartitionArgs { ..good }],
        1,
        100
    ))
    .is_ok());
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "negative replica",
            request_header(&[fb::FetchPartitionArgs { ..good }], -1, 100),
        ),
        (
            "zero max bytes",
            request_header(&[fb::FetchPartitionArgs { ..good }], 1, 0),
        ),
        (
            "no topic id",
            request_header(
                &[fb::FetchPartitionArgs {
                    topic_id: None,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "nil topic id",
            request_header(
                &[fb::FetchPartitionArgs {
                    topic_id: Some(&nil),
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "negative partition",
            request_header(
                &[fb::FetchPartitionArgs {
                    partition: -1,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "negative offset",
            request_header(
                &[fb::FetchPartitionArgs {
                    fetch_offset: -1,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "epoch below -1",
            request_header(
                &[fb::FetchPartitionArgs {
                    current_leader_epoch: -2,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "last epoch below -1",
            request_header(
                &[fb::FetchPartitionArgs {
                    last_fetched_epoch: -7,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "synced offset below -1",
            request_header(
                &[fb::FetchPartitionArgs {
                    synced_offset: -2,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "synced offset past the fetch offset",
            request_header(
                &[fb::FetchPartitionArgs {
                    fetch_offset: 10,
                    synced_offset: 11,
                    ..good
                }],
                1,
                100,
            ),
        ),
        (
            "twice the same partition",
            request_header(
                &[
                    fb::FetchPartitionArgs { ..good },
                    fb::FetchPartitionArgs { ..good },
                ],
                1,
                100,
            ),
        ),
    ];
    for (what, frame) in cases {
        assert!(decode_frame(&frame).is_err(), "{what} was accepted");
    }
}

#[test]
fn table_heavy_headers_are_bounded_by_the_verifier() {
    let args: Vec<_> = (0..500)
        .map(|i| fb::FetchPartitionArgs {
            partition: i,
            ..Default::default()
        })
        .collect();
    let frame = request_header(&args, 1, 100);
    let header = &frame[8..];
    let tight = flatbuffers::VerifierOptions {
        max_tables: 100,
        ..verifier_options()
    };
    assert!(flatbuffers::root_with_opts::<fb::Frame>(&tight, header).is_err());
    assert!(verify_header(header).is_ok());
}

#[test]
fn too_many_partitions_are_refused_both_ways() {
    let mut request = one_partition_request();
    let template = request.partitions[0];
    request.partitions = (0..=MAX_FETCH_PARTITIONS as i32)
        .map(|partition| FetchPartition {
            partition,
            ..template
        })
        .collect();
    assert!(matches!(
        encode_request(&request),
        Err(FrameError::TooLarge { .. })
    ));
    let args: Vec<_> = (0..=MAX_FETCH_PARTITIONS as i32)
        .map(|partition| fb::FetchPartitionArgs {
            partition,
            ..Default::default()
        })
        .collect();
    assert!(decode_frame(&request_header(&args, 1, 100)).is_err());
}

#[test]
fn unknown_or_missing_bodies_are_refused() {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let body = fb::FetchResponse::create(&mut fbb, &fb::FetchResponseArgs::default());
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id: 0,
            body_type: fb::Body(9),
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(root, None);
    assert!(decode_frame(&frame_around(fbb.finished_data(), &[])).is_err());

    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id: 0,
            body_type: fb::Body::FetchRequest,
            body: None,
        },
    );
    fbb.finish(root, None);
    // A union type without its value: the verifier refuses it before the decoder looks.
    assert!(matches!(
        decode_frame(&frame_around(fbb.finished_data(), &[])),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn a_follower_takes_responses_only_in_the_order_of_its_requests() {
    let mut follower = FollowerConnection::new();
    let first = follower.send(one_partition_request()).unwrap();
    let second = follower.send(one_partition_request()).unwrap();
    assert_eq!(follower.in_flight(), 2);
    let Message::FetchRequest(first) = decode_frame(&first.slice(LENGTH_BYTES..)).unwrap() else {
        panic!()
    };
    let Message::FetchRequest(second) = decode_frame(&second.slice(LENGTH_BYTES..)).unwrap() else {
        panic!()
    };
    assert!(second.correlation_id > first.correlation_id);

    // The second answer first: out of order, the connection is done.
    let early = response_frame(&answer(&second, b""));
    assert!(matches!(
        follower.receive(&early),
        Err(FrameError::OutOfOrder(_))
    ));

    let mut follower = FollowerConnection::new();
    follower.send(one_partition_request()).unwrap();
    let (asked, got) = follower
        .receive(&response_frame(&answer(&first, b"x")))
        .unwrap();
    assert_eq!(asked.partitions, first.partitions);
    assert_eq!(&got.partitions[0].records[..], b"x");
    // The same answer again: nothing is in flight any more.
    assert!(matches!(
        follower.receive(&response_frame(&answer(&first, b"x"))),
        Err(FrameError::OutOfOrder(_))
    ));
}

#[test]
fn a_response_must_answer_the_partitions_asked_for() {
    let mut follower = FollowerConnection::new();
    follower.send(one_partition_request()).unwrap();
    let mut request = one_partition_request();
    request.partitions[0].partition = 9;
    assert!(matches!(
        follower.receive(&response_frame(&answer(&request, b""))),
        Err(FrameError::OutOfOrder(_))
    ));
    // A request-level error answers without partitions.
    let mut follower = FollowerConnection::new();
    follower.send(one_partition_request()).unwrap();
    let refusal = FetchResponse {
        correlation_id: 0,
        error_code: 58,
        partitions: vec![],
    };
    assert!(follower.receive(&response_frame(&refusal)).is_ok());
}

#[test]
fn a_leader_refuses_repeated_reordered_or_foreign_requests() {
    let encode = |correlation_id: i32, replica_id: i32| {
        let request = FetchRequest {
            correlation_id,
            replica_id,
            ..one_partition_request()
        };
        encode_request(&request).unwrap().slice(LENGTH_BYTES..)
    };
    let mut leader = LeaderConnection::new();
    assert!(leader.receive(&encode(5, 2)).is_ok());
    assert!(leader.receive(&encode(6, 2)).is_ok());
    assert!(matches!(
        leader.receive(&encode(6, 2)),
        Err(FrameError::OutOfOrder(_))
    ));
    let mut leader = LeaderConnection::new();
    leader.receive(&encode(5, 2)).unwrap();
    assert!(matches!(
        leader.receive(&encode(4, 2)),
        Err(FrameError::OutOfOrder(_))
    ));
    let mut leader = LeaderConnection::new();
    leader.receive(&encode(5, 2)).unwrap();
    assert!(matches!(
        leader.receive(&encode(9, 3)),
        Err(FrameError::OutOfOrder(_))
    ));
    // A response has no business arriving at a leader.
    let mut leader = LeaderConnection::new();
    let response = response_frame(&answer(&one_partition_request(), b""));
    assert!(matches!(
        leader.receive(&response),
        Err(FrameError::OutOfOrder(_))
    ));
}

#[test]
fn a_follower_keeps_a_bounded_number_of_requests_in_flight() {
    let mut follower = FollowerConnection::new();
    for _ in 0..MAX_IN_FLIGHT_REQUESTS {
        follower.send(one_partition_request()).unwrap();
    }
    assert!(matches!(
        follower.send(one_partition_request()),
        Err(FrameError::TooLarge { .. })
    ));
}
