//! Bytes no good client sends: malformed frames, huge and negative lengths, unknown API keys
//! and versions, truncated requests, batches with a bad CRC or over the size limit. The broker
//! answers (with Kafka's error code) or closes that one connection, never panics, and keeps
//! serving everyone else.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::records::Compression;

use common::raw::{
    ensure_topic, error_code, header_v1, pick_version, produce_one, record_batch, KafkaConn,
    Outcome, BATCH_CRC_OFFSET,
};
use common::{unique_topic, Broker};

/// A fresh connection still gets answers, the process is alive and has not panicked.
fn assert_still_serving(broker: &mut Broker) {
    assert!(
        broker.is_running(),
        "the broker exited; stderr:\n{}",
        broker.stderr()
    );
    let versions = KafkaConn::connect(broker.addr()).api_versions();
    assert!(versions.contains_key(&(ApiKey::Metadata as i16)));
    broker.assert_no_panic();
}

/// An error response must belong to the request (same correlation id); a close is fine too.
fn assert_answered_or_closed(outcome: Outcome, correlation_id: i32) {
    if let Outcome::Response(frame) = outcome {
        assert!(frame.len() >= 4, "response shorter than a header");
        let got = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(
            got, correlation_id,
            "a response to a bad request must carry its correlation id"
        );
    }
}

#[test]
fn huge_length_prefix_closes_the_connection_and_others_are_served() {
    let mut broker = Broker::start();
    // Another client connected before the bad one keeps working afterwards.
    let mut bystander = KafkaConn::connect(broker.addr());
    bystander.api_versions();

    let mut conn = KafkaConn::connect(broker.addr());
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&i32::MAX.to_be_bytes());
    bytes.extend_from_slice(&header_v1(ApiKey::Metadata as i16, 1, 1));
    let _ = conn.write_raw(&bytes);
    // The frame will never arrive in full: the broker must close the connection rather than
    // wait for (or allocate) 2 GiB. An error response for the header it saw may come first.
    match conn.read_outcome() {
        Outcome::Closed => {}
        outcome => {
            assert_answered_or_closed(outcome, 1);
            conn.expect_closed();
        }
    }

    bystander.api_versions();
    assert_still_serving(&mut broker);
}

#[test]
fn negative_and_zero_length_prefixes_are_refused() {
    let mut broker = Broker::start();
    for len in [-1i32, i32::MIN, 0] {
        let mut conn = KafkaConn::connect(broker.addr());
        let _ = conn.write_raw(&len.to_be_bytes());
        let _ = conn.write_raw(&[0u8; 16]);
        conn.expect_closed();
    }
    assert_still_serving(&mut broker);
}

#[test]
fn frames_too_short_for_a_header_are_refused() {
    let mut broker = Broker::start();
    for body in [&[0u8][..], &[0, 3], &[0, 3, 0, 1], &[0, 3, 0, 1, 0, 0, 0]] {
        let mut conn = KafkaConn::connect(broker.addr());
        let _ = conn.write_frame(body);
        match conn.read_outcome() {
            Outcome::Closed => {}
            Outcome::Response(_) => panic!(
                "a {}-byte frame has no correlation id to answer",
                body.len()
            ),
        }
    }
    assert_still_serving(&mut broker);
}

#[test]
fn random_garbage_frames_never_take_the_broker_down() {
    let mut broker = Broker::start();
    // A fixed xorshift stream: the same garbage on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let len = (next() % 300) as usize + 8;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half the frames look like a real header (known key, plausible version) with a
        // garbage body, so the decoders behind the router see them too.
        if round % 2 == 0 {
            let key = (next() % 68) as i16;
            let version = (next() % 14) as i16;
            body[0..2].copy_from_slice(&key.to_be_bytes());
            body[2..4].copy_from_slice(&version.to_be_bytes());
            body[8..10].copy_from_slice(&(-1i16).to_be_bytes()); // null client id
        }
        let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        let mut conn = KafkaConn::connect(broker.addr());
        if conn.write_frame(&body).is_err() {
            continue;
        }
        conn.shutdown_write();
        // Whatever it answers must be for this request, then the connection ends.
        let outcome = conn.read_outcome();
        assert_answered_or_closed(outcome, correlation_id);
    }
    assert_still_serving(&mut broker);
}

#[test]
fn unknown_api_key_gets_an_error_or_a_close_and_others_are_served() {
    let mut broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let mut frame = header_v1(32_000, 0, 4242);
    frame.put_slice(&[0u8; 8]);
    conn.write_frame(&frame).expect("write");
    let outcome = conn.read_outcome();
    let answered = matches!(outcome, Outcome::Response(_));
    assert_answered_or_closed(outcome, 4242);
    if answered {
        // If the broker answered, the connection must still be usable.
        conn.api_versions();
    }
    assert_still_serving(&mut broker);
}

#[test]
fn unsupported_version_of_a_known_api_gets_an_error_or_a_close() {
    let mut broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let (_, max) = conn.api_versions()[&(ApiKey::Metadata as i16)];
    let too_new = max + 1;
    // Metadata v9+ is flexible; the body is an empty topic array either way.
    let mut frame = header_v1(ApiKey::Metadata as i16, too_new, 5151);
    frame.put_u8(0); // tagged fields of header v2
    frame.put_u8(1); // compact array: 0 topics
    frame.put_u8(0); // allow_auto_topic_creation
    frame.put_u8(0); // include_topic_authorized_operations
    frame.put_u8(0); // tagged fields
    conn.write_frame(&frame).expect("write");
    let outcome = conn.read_outcome();
    let answered = matches!(outcome, Outcome::Response(_));
    assert_answered_or_closed(outcome, 5151);
    if answered {
        conn.api_versions();
    }
    assert_still_serving(&mut broker);
}

#[test]
fn truncated_frame_followed_by_eof_closes_the_connection() {
    let mut broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let header = header_v1(ApiKey::Metadata as i16, 1, 9);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&100i32.to_be_bytes()); // promises 100 bytes...
    bytes.extend_from_slice(&header); // ...sends 16
    conn.write_raw(&bytes).expect("write");
    conn.shutdown_write();
    conn.expect_closed();
    assert_still_serving(&mut broker);
}

#[test]
fn request_body_cut_short_inside_a_complete_frame_is_answered_or_closed() {
    let mut broker = Broker::start();
    // Metadata v1 claiming 5 topics and carrying none; Produce v3 claiming a topic array
    // of a billion entries (a decoder that trusts the count would try to allocate it).
    let mut metadata = header_v1(ApiKey::Metadata as i16, 1, 11);
    metadata.put_i32(5);
    let mut produce = header_v1(ApiKey::Produce as i16, 3, 12);
    produce.put_i16(-1); // null transactional id
    produce.put_i16(1); // acks
    produce.put_i32(1000); // timeout
    produce.put_i32(1_000_000_000); // topic count
    produce.put_i16(1);
    for (frame, correlation_id) in [(metadata, 11), (produce, 12)] {
        let mut conn = KafkaConn::connect(broker.addr());
        conn.write_frame(&frame).expect("write");
        assert_answered_or_closed(conn.read_outcome(), correlation_id);
    }
    assert_still_serving(&mut broker);
}

/// Produce versions both sides speak (kafka-protocol encodes v3..; v13 needs topic ids).
fn produce_version(conn: &mut KafkaConn) -> i16 {
    let versions = conn.api_versions();
    pick_version(&versions, ApiKey::Produce, 3, 12)
}

#[test]
fn produce_with_a_bad_crc_gets_corrupt_message_and_stores_nothing() {
    let mut broker = Broker::start();
    let topic = unique_topic("bad-crc");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let version = produce_version(&mut conn);

    let good = record_batch(
        &[Bytes::from_static(b"hello"), Bytes::from_static(b"world")],
        Compression::None,
    );
    let mut bad = BytesMut::from(&good[..]);
    // The last record ends with its value "world" and a one-byte header count: flip a
    // byte of the value, which the CRC covers.
    let in_value = bad.len() - 3;
    assert_eq!(bad[in_value], b'l');
    bad[in_value] ^= 0xff;
    assert_ne!(&bad[BATCH_CRC_OFFSET..BATCH_CRC_OFFSET + 4], &[0u8; 4][..]);
    let (code, _) = produce_one(&mut conn, version, &topic, 0, bad.freeze());
    assert_eq!(
        code,
        error_code::CORRUPT_MESSAGE,
        "Kafka answers a CRC mismatch with CORRUPT_MESSAGE"
    );

    // Nothing was appended: the next good batch starts at offset 0.
    let (code, base_offset) = produce_one(&mut conn, version, &topic, 0, good);
    assert_eq!(code, error_code::NONE);
    assert_eq!(base_offset, 0, "the corrupt batch must not take offsets");
    assert_still_serving(&mut broker);
}

#[test]
fn produce_with_a_batch_length_past_the_data_is_rejected_and_stores_nothing() {
    let mut broker = Broker::start();
    let topic = unique_topic("bad-len");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let version = produce_version(&mut conn);

    let good = record_batch(&[Bytes::from_static(b"payload")], Compression::None);
    let mut bad = BytesMut::from(&good[..]);
    let claimed = i32::from_be_bytes([bad[8], bad[9], bad[10], bad[11]]) + 1000;
    bad[8..12].copy_from_slice(&claimed.to_be_bytes());
    let (code, _) = produce_one(&mut conn, version, &topic, 0, bad.freeze());
    assert!(
        code == error_code::CORRUPT_MESSAGE || code == error_code::INVALID_RECORD,
        "a batch whose length runs past the data must be refused (got error {code})"
    );
    let (code, base_offset) = produce_one(&mut conn, version, &topic, 0, good);
    assert_eq!(code, error_code::NONE);
    assert_eq!(base_offset, 0);
    assert_still_serving(&mut broker);
}

#[test]
fn batch_over_max_message_bytes_gets_message_too_large() {
    let mut broker = Broker::start();
    let topic = unique_topic("too-large");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let version = produce_version(&mut conn);

    // Kafka's default max.message.bytes is 1048588; this batch is 2 MiB of incompressible data.
    let mut state: u32 = 1;
    let big: Vec<u8> = (0..2 << 20)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    let batch = record_batch(&[Bytes::from(big)], Compression::None);
    let (code, _) = produce_one(&mut conn, version, &topic, 0, batch);
    assert_eq!(code, error_code::MESSAGE_TOO_LARGE);

    let (code, base_offset) = produce_one(
        &mut conn,
        version,
        &topic,
        0,
        record_batch(&[Bytes::from_static(b"small")], Compression::None),
    );
    assert_eq!(code, error_code::NONE);
    assert_eq!(base_offset, 0, "the oversize batch must not take offsets");
    assert_still_serving(&mut broker);
}

#[test]
fn produce_to_a_partition_that_does_not_exist_gets_unknown_topic_or_partition() {
    let mut broker = Broker::start();
    let topic = unique_topic("no-such-partition");
    let mut conn = KafkaConn::connect(broker.addr());
    let partitions = ensure_topic(&mut conn, &topic) as i32;
    let version = produce_version(&mut conn);
    let (code, _) = produce_one(
        &mut conn,
        version,
        &topic,
        partitions + 5,
        record_batch(&[Bytes::from_static(b"x")], Compression::None),
    );
    assert_eq!(code, error_code::UNKNOWN_TOPIC_OR_PARTITION);
    assert_still_serving(&mut broker);
}

#[test]
fn hundreds_of_idle_connections_do_not_stop_others_being_served() {
    let mut broker = Broker::start();
    let idle: Vec<KafkaConn> = (0..300)
        .map(|_| KafkaConn::connect(broker.addr()))
        .collect();
    // Some of them half-way through a request.
    let mut idle = idle;
    for (i, conn) in idle.iter_mut().enumerate().step_by(3) {
        let _ = conn.write_raw(&(64i32 + i as i32).to_be_bytes());
    }
    assert_still_serving(&mut broker);
    drop(idle);
    assert_still_serving(&mut broker);
}
